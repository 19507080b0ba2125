"""Python SDK for BIM users: submit jobs with idempotency keys and retries, follow them,
and verify their receipts without trusting the transport."""

from .client import BimError, Client, EmbeddingResult
from .receipts import ReceiptInvalid, verify_receipt

__all__ = ["BimError", "Client", "EmbeddingResult", "ReceiptInvalid", "verify_receipt"]
