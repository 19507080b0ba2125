"""BIM's core: pure Python shared by the registry, the headless node, the SDK and the
benchmarks. It imports nothing of the project and no Django (`.importlinter`)."""
