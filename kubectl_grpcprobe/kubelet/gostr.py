"""Go spellings the kubelet's messages are made of: durations, %q strings, gRPC code names.

The verdict must match the kubelet's output byte for byte, and the kubelet formats with Go's
fmt, so these mirror time.Duration.String, strconv.Quote and codes.Code.String.
"""

from __future__ import annotations

import re

_UNITS = (("h", 3600 * 10**9), ("m", 60 * 10**9))


def duration(nanoseconds: int) -> str:
    """time.Duration(nanoseconds).String(): 1s, 1.5s, 1m30s, 250ms, 0s."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    ns = abs(nanoseconds)
    if ns < 10**9:
        for unit, scale in (("ms", 10**6), ("µs", 10**3), ("ns", 1)):
            if ns >= scale:
                return sign + _fraction(ns, scale) + unit
    out = ""
    for unit, scale in _UNITS:
        if ns >= scale:
            out += f"{ns // scale}{unit}"
            ns %= scale
        elif out:
            out += f"0{unit}"
    return sign + out + _fraction(ns, 10**9) + "s"


def _fraction(value: int, scale: int) -> str:
    whole, rest = divmod(value, scale)
    if not rest:
        return str(whole)
    digits = len(str(scale)) - 1
    return f"{whole}.{rest:0{digits}d}".rstrip("0")


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_duration(text: str) -> int:
    """time.ParseDuration, plus a bare number meaning seconds (as kubectl's --request-timeout)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            raise ValueError(f"invalid duration {text!r}")
        return round(seconds * 10**9)
    body = text[1:] if text[:1] in "+-" else text
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _GO_DURATION.match(body, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    return round(-total if text.startswith("-") else total)


def quote(text: str) -> str:
    """strconv.Quote: double quotes, Go escapes for control and non-printable characters."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\v":
            out.append("\\v")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x7F or ch.isprintable():
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


# codes.Code.String() in google.golang.org/grpc/codes; note Go's "Canceled" spelling.
GRPC_CODE_NAMES = {
    0: "OK",
    1: "Canceled",
    2: "Unknown",
    3: "InvalidArgument",
    4: "DeadlineExceeded",
    5: "NotFound",
    6: "AlreadyExists",
    7: "PermissionDenied",
    8: "ResourceExhausted",
    9: "FailedPrecondition",
    10: "Aborted",
    11: "OutOfRange",
    12: "Unimplemented",
    13: "Internal",
    14: "Unavailable",
    15: "DataLoss",
    16: "Unauthenticated",
}


def grpc_code_name(code: int) -> str:
    return GRPC_CODE_NAMES.get(code, f"Code({code})")


def join_host_port(host: str, port: int) -> str:
    """net.JoinHostPort: IPv6 literals go in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
