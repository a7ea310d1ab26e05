"""Prompts for the evaluators: a case to rate, with its rating URL as a QR module matrix (protocol `prompt`)."""
from __future__ import annotations

import qrcode

from protocol import codec


def qr_matrix(url: str) -> dict:
    """The URL's QR code (error correction M, the smallest version that holds it) in the wire form."""
    code = qrcode.QRCode(border=0, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(url)
    code.make(fit=True)
    return codec.pack_matrix(code.get_matrix())


def prompt(case: str, text: str, url: str, ttl: int) -> dict:
    """A prompt message; `text` is already masked (no full name or certificate number ever goes to a device)."""
    return {"v": 1, "k": "prompt", "case": case, "text": text, "qr": qr_matrix(url), "ttl": ttl}
