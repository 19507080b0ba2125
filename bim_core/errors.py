"""The one error type services raise for a request they refuse: views turn it into
an HTTP answer with a machine-readable code, consumers into a protocol error."""



class ServiceError(Exception):
    status = 400

    def __init__(self, code: str, detail: str, *, status: int | None = None, extra: dict | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        # More machine-readable fields for the body (a content policy's rule, a retry delay,
        # links a client can follow).
        self.extra = extra or {}
        if status is not None:
            self.status = status
