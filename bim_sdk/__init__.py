"""Python SDK for BIM users: submit jobs with idempotency keys and retries, follow them,
and verify their receipts without trusting the transport. `bim --help` (`cli`) is the same
on the command line."""

from .client import BimError, Client, DataTermsNotAcknowledged
from .receipts import ReceiptInvalid, receipt_trusted, verify_receipt
from .results import EmbeddingResult, ImageResult, TextDelta, TextResult

__all__ = [
    "BimError",
    "Client",
    "DataTermsNotAcknowledged",
    "EmbeddingResult",
    "ImageResult",
    "ReceiptInvalid",
    "TextDelta",
    "TextResult",
    "receipt_trusted",
    "verify_receipt",
]
