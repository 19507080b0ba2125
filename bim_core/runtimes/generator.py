"""Greedy text generation with a GGUF model under llama.cpp, and teacher-forced re-scoring.

Every choice here is part of what two nodes must agree on for their token ids to be
identical, so each is pinned by the subnet rather than left to a default:

- the model file and the runtime (llama-cpp-python built with GGML_NATIVE=OFF: token- and
  logit-identical across thread counts), the context size, the batch size (prompt
  processing in batches of a different size takes other kernels, and logits move in their
  last bits);
- the prompt: SmolLM2's chat template (ChatML with its default system prompt), rendered
  here without Jinja. Template pieces are tokenized with special tokens enabled and the
  user's text with them disabled, so a prompt that contains "<|im_start|>" is text, not
  a turn boundary; nodes agree on the exact prompt token ids;
- decoding: greedy (argmax of the logits, lowest id on a tie), which is what the
  contract's temperature 0 / top_p 1 mean; anything else is refused. Generation stops
  after the first end-of-generation token (kept in the token ids, so re-scoring checks
  that stopping was the model's top choice too) or after `max_new_tokens`.

`rescore` runs the prompt and a claimed continuation through the model in one
teacher-forced pass and returns, per claimed token, its logit and the top logit at that
position: the registry's evidence when two nodes' sequences differ
(`bim_core.verification.judge_rescored`).
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

RUNTIME = f"llama-cpp-python-{llama_cpp.__version__}"

CHAT_TEMPLATE = "smollm2-chatml"
# SmolLM2-Instruct's own template adds this system turn when the conversation has none.
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

FINISH_STOP = "stop"
FINISH_LENGTH = "length"

TokenCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # generated ids; ends with the stop token when finish == "stop"
    text: str  # the generated text, without the stop token
    finish: str  # "stop" | "length"
    prompt_tokens: int


def determinism_refusal(determinism: dict[str, Any]) -> str:
    """Why this runner refuses a contract's determinism flags ("" when it accepts them):
    greedy decoding is the only decoding two strangers reproduce token for token."""
    temperature, top_p = determinism.get("temperature", 0), determinism.get("top_p", 1)
    if temperature != 0 or top_p != 1:
        return f"only greedy decoding (temperature 0, top_p 1), not temperature {temperature}, top_p {top_p}"
    return ""


def model_file(model: bytes | Path) -> Path:
    """llama.cpp loads from a path: verified bytes from the chunk cache are written once
    under a name derived from their hash, and reused."""
    if isinstance(model, Path):
        return model
    digest = hashlib.sha256(model).hexdigest()
    path = Path(tempfile.gettempdir()) / "bim-models" / f"{digest}.gguf"
    if not path.is_file() or path.stat().st_size != len(model):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(model)
        os.replace(tmp, path)
    return path


def _free(llm: llama_cpp.Llama, batch: Any) -> None:
    llama_cpp.llama_batch_free(batch)
    llm.close()


class Generator:
    """One loaded model and context; not thread-safe (a node runs one job at a time)."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        n_ctx: int = 1024,
        n_batch: int = 512,
        seed: int = 0,
        threads: int = 1,
        system_prompt: str = SYSTEM_PROMPT,
        chat_template: str = CHAT_TEMPLATE,
    ) -> None:
        if chat_template != CHAT_TEMPLATE:
            raise ValueError(f"chat template {chat_template!r} is not supported (only {CHAT_TEMPLATE!r})")
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.system_prompt = system_prompt
        # No logits_all: the passes below ask llama.cpp for logits only at the positions
        # they read, so re-scoring does not pay the output layer for every prompt token.
        self.llm = llama_cpp.Llama(
            model_path=str(model_file(model)),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            seed=seed,
            logits_all=False,
            verbose=False,
        )
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        # What the cache holds after a re-scoring pass (prompt + claimed tokens, all but the
        # last fed) and that pass's scores by position: the next pass reuses their prefix.
        self._scored: list[int] = []
        self._scores: dict[int, tuple[float, float]] = {}
        # Freed with the generator, or at exit while llama_cpp is still importable (a
        # __del__ run during interpreter teardown finds its module globals gone).
        weakref.finalize(self, _free, self.llm, self.batch)

    @classmethod
    def from_preprocessing(cls, model: bytes | Path, preprocessing: dict[str, Any], *, threads: int = 1) -> Generator:
        """Build from a manifest's `preprocessing` block."""
        return cls(
            model,
            n_ctx=int(preprocessing.get("n_ctx", 1024)),
            n_batch=int(preprocessing.get("n_batch", 512)),
            seed=int(preprocessing.get("seed", 0)),
            threads=threads,
            system_prompt=str(preprocessing.get("system_prompt", SYSTEM_PROMPT)),
            chat_template=str(preprocessing.get("chat_template", CHAT_TEMPLATE)),
        )

    # ------------------------------------------------------------------ tokens

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The chat-templated prompt, ending where the assistant's turn begins."""

        def special(text: str) -> list[int]:
            return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

        return [
            *special(f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n"),
            *self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False),
            *special("<|im_end|>\n<|im_start|>assistant\n"),
        ]

    def is_stop(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def detokenize(self, tokens: Sequence[int]) -> str:
        # errors="replace": a sequence cut by max_new_tokens may end inside a character.
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ passes

    def _forward(self, tokens: Sequence[int], start: int, outputs: set[int]) -> dict[int, np.ndarray]:
        """Feed `tokens` at positions start.. (the cache holds everything before) in
        batches of n_batch; return the logits at the positions in `outputs`."""
        logits: dict[int, np.ndarray] = {}
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            self.batch.n_tokens = len(chunk)
            wanted = []
            for i, token in enumerate(chunk):
                position = start + offset + i
                self.batch.token[i] = token
                self.batch.pos[i] = position
                self.batch.n_seq_id[i] = 1
                self.batch.seq_id[i][0] = 0
                self.batch.logits[i] = position in outputs
                if position in outputs:
                    wanted.append((i, position))
            if llama_cpp.llama_decode(self.llm.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed")
            for i, position in wanted:
                row = llama_cpp.llama_get_logits_ith(self.llm.ctx, i)
                logits[position] = np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)).copy()
        return logits

    def _reset(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)
        self._scored, self._scores = [], {}

    def _check_length(self, prompt_len: int, new_tokens: int) -> None:
        if prompt_len + new_tokens > self.n_ctx:
            raise ValueError(f"{prompt_len} prompt tokens + {new_tokens} new ones exceed the context of {self.n_ctx}")

    def generate(
        self,
        prompt: str,
        max_new_tokens: int,
        *,
        on_token: TokenCallback | None = None,
    ) -> Generation:
        """Greedy continuation of the chat-templated prompt. `on_token(token_id, text_delta)`
        is called after each token (the stop token's delta is empty), for streaming."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        prompt_ids = self.prompt_tokens(prompt)
        self._check_length(len(prompt_ids), max_new_tokens)
        self._reset()
        last = len(prompt_ids) - 1
        logits = self._forward(prompt_ids, 0, {last})[last]
        tokens: list[int] = []
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finish = FINISH_LENGTH
        while len(tokens) < max_new_tokens:
            token = int(np.argmax(logits))  # first maximum: ties go to the lowest id
            tokens.append(token)
            stop = self.is_stop(token)
            if on_token is not None:
                on_token(token, "" if stop else decoder.decode(self.llm.detokenize([token])))
            if stop:
                finish = FINISH_STOP
                break
            if len(tokens) == max_new_tokens:
                break
            position = len(prompt_ids) + len(tokens) - 1
            logits = self._forward([token], position, {position})[position]
        text_tokens = tokens[:-1] if finish == FINISH_STOP else tokens
        return Generation(tokens=tokens, text=self.detokenize(text_tokens), finish=finish, prompt_tokens=len(prompt_ids))

    def rescore(self, prompt: str, tokens: Sequence[int]) -> list[tuple[float, float]]:
        """One teacher-forced pass over prompt + claimed tokens: for each claimed token,
        (its logit, the top logit) at the position that predicted it."""
        prompt_ids = self.prompt_tokens(prompt)
        claimed = [int(t) for t in tokens]
        if any(not 0 <= t < self.n_vocab for t in claimed):
            raise ValueError("a claimed token id is outside the vocabulary")
        self._check_length(len(prompt_ids), len(claimed))
        if not claimed:
            return []
        full = prompt_ids + claimed
        first = len(prompt_ids) - 1
        # The registry re-scores a pair: the second sequence shares the prompt and usually a
        # prefix with the first, whose cache and scores this pass reuses. Position p's score
        # (for token p + 1) carries over while tokens up to p + 1 are the same; the cache is
        # cut one position earlier, so the first differing score is computed afresh.
        same = next((i for i, (x, y) in enumerate(zip(full, self._scored)) if x != y), min(len(full), len(self._scored)))
        start = max(0, min(same - 1, len(self._scored) - 1))
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.llm.ctx), 0, start, -1)
        # The last claimed token predicts nothing that is checked: it is not fed.
        fed = range(max(first, start), len(full) - 1)
        logits = self._forward(full[start:-1], start, set(fed))
        scores = {p: self._scores[p] for p in range(first, start)}
        scores.update({p: (float(logits[p][full[p + 1]]), float(logits[p].max())) for p in fed})
        self._scored, self._scores = full, scores
        return [scores[p] for p in range(first, len(full) - 1)]


PartialCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class Rescoring:
    positions: list[tuple[float, float]]  # per claimed token: (its logit, the top logit)
    problems: list[str]  # structural faults that fail the sequence whatever its logits


class TextRunner:
    """A text subnet's runner, for nodes and for the registry's trusted runs:
    `runner(inputs)` generates the result the text family encodes, `runner.rescore`
    re-scores a claimed result. Streams when given `on_partial(text so far, tokens so far)`."""

    streams = True

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        # One context, one pass at a time: the registry may verify two jobs in two threads.
        self.lock = threading.Lock()

    def contract_refusal(self, contract: dict[str, Any]) -> str:
        """Why a job's contract cannot be run here ("" when it can)."""
        return determinism_refusal(contract.get("determinism") or {})

    def __call__(self, inputs: dict[str, Any], on_partial: PartialCallback | None = None) -> dict[str, Any]:
        pieces: list[str] = []

        def on_token(_token: int, delta: str) -> None:
            pieces.append(delta)
            if on_partial is not None:
                on_partial("".join(pieces), len(pieces))

        with self.lock:
            generation = self.generator.generate(inputs["prompt"], int(inputs["max_tokens"]), on_token=on_token)
        return {"finish": generation.finish, "text": generation.text, "tokens": generation.tokens}

    def rescore(self, inputs: dict[str, Any], result: dict[str, Any]) -> Rescoring:
        """The evidence for one claimed result: per-token (claimed, top) logits from one
        teacher-forced pass, plus what a pass cannot show: a stop token anywhere but at the
        end, a "stop" without one, and a text that is not the tokens' text."""
        tokens = [int(t) for t in result["tokens"]]
        problems = []
        stops = [i for i, t in enumerate(tokens) if 0 <= t < self.generator.n_vocab and self.generator.is_stop(t)]
        if stops and stops[0] != len(tokens) - 1:
            problems.append(f"stop token at position {stops[0]} before the end")
        if (result["finish"] == FINISH_STOP) != bool(stops):
            problems.append(f"finish {result['finish']} does not match the tokens")
        try:
            with self.lock:
                positions = self.generator.rescore(inputs["prompt"], tokens)
        except ValueError as exc:
            return Rescoring(positions=[], problems=[*problems, str(exc)])
        body = tokens[:-1] if result["finish"] == FINISH_STOP else tokens
        if not problems and self.generator.detokenize(body) != result["text"]:
            problems.append("text is not the decoded tokens")
        return Rescoring(positions=positions, problems=problems)
