"""The stand-in's rate limits: sliding 60 s windows of requests and tokens, and the
``x-ratelimit-*`` headers and 429 messages OpenAI sends."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Verdict", "Windows", "count_tokens", "fmt_duration"]

_WINDOW_S = 60.0
_NOMINAL_RPM = 10_000  # advertised in headers when no limit is configured
_NOMINAL_TPM = 30_000_000


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def fmt_duration(seconds: float) -> str:
    """OpenAI's reset format: "0s", "250ms", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m" + f"{rest:.3f}".rstrip("0").rstrip(".") + "s"


@dataclass
class Verdict:
    """Outcome of the rate-limit check, with the header values to send."""

    ok: bool
    kind: str = ""  # "requests" | "tokens" when rejected
    retry_s: float = 0.0
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class Windows:
    """Sliding 60 s windows of admitted requests and their tokens (caller locks).

    ``model`` is the name the 429 messages quote.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0

    def clear(self) -> None:
        self.requests.clear()
        self.tokens.clear()
        self.token_sum = 0

    def _prune(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - _WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - _WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]

    def admit(self, now: float, charge: int, rpm: int | None, tpm: int | None) -> Verdict:
        self._prune(now)
        verdict = Verdict(ok=True)
        used_r, used_t = len(self.requests), self.token_sum
        if rpm is not None and used_r + 1 > rpm:
            retry = self.requests[0] + _WINDOW_S - now
            verdict = Verdict(
                False,
                "requests",
                retry,
                (
                    f"Rate limit reached for {self.model} in organization org-standin on "
                    f"requests per min (RPM): Limit {rpm}, Used {used_r}, Requested 1. "
                    f"Please try again in {fmt_duration(retry)}."
                ),
            )
        elif tpm is not None and used_t + charge > tpm:
            if charge > tpm:
                retry = _WINDOW_S
                text = (
                    f"Request too large for {self.model} in organization org-standin on "
                    f"tokens per min (TPM): Limit {tpm}, Requested {charge}."
                )
            else:
                freed, retry = 0, _WINDOW_S
                for stamp, tokens in self.tokens:
                    freed += tokens
                    if used_t - freed + charge <= tpm:
                        retry = stamp + _WINDOW_S - now
                        break
                text = (
                    f"Rate limit reached for {self.model} in organization org-standin on "
                    f"tokens per min (TPM): Limit {tpm}, Used {used_t}, Requested {charge}. "
                    f"Please try again in {fmt_duration(retry)}."
                )
            verdict = Verdict(False, "tokens", retry, text)
        else:
            self.requests.append(now)
            self.tokens.append((now, charge))
            self.token_sum += charge
        verdict.headers = self.headers(now, rpm, tpm, verdict)
        return verdict

    def headers(
        self, now: float, rpm: int | None, tpm: int | None, verdict: Verdict | None = None
    ) -> dict[str, str]:
        """The x-ratelimit-* headers for the windows' current state."""
        self._prune(now)
        limit_r, limit_t = rpm or _NOMINAL_RPM, tpm or _NOMINAL_TPM
        reset_r = self.requests[0] + _WINDOW_S - now if self.requests else 0.0
        reset_t = self.tokens[0][0] + _WINDOW_S - now if self.tokens else 0.0
        if verdict is not None and not verdict.ok:  # when the blocked resource frees up
            reset_r = verdict.retry_s if verdict.kind == "requests" else reset_r
            reset_t = verdict.retry_s if verdict.kind == "tokens" else reset_t
        return {
            "x-ratelimit-limit-requests": str(limit_r),
            "x-ratelimit-remaining-requests": str(max(0, limit_r - len(self.requests))),
            "x-ratelimit-reset-requests": fmt_duration(reset_r),
            "x-ratelimit-limit-tokens": str(limit_t),
            "x-ratelimit-remaining-tokens": str(max(0, limit_t - self.token_sum)),
            "x-ratelimit-reset-tokens": fmt_duration(reset_t),
        }
