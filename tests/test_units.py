"""Pure functions: Go spellings, WebSocket framing, selectors, probe resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubectl_grpcprobe.errors import NothingToProbe, UsageError
from kubectl_grpcprobe.kubelet import gostr
from kubectl_grpcprobe.kubelet.resolve import resolve
from kubectl_grpcprobe.sandbox.apiserver.selectors import label_selector
from kubectl_grpcprobe.wire import wsframe


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (10**9, "1s"),
        (1_500_000_000, "1.5s"),
        (90 * 10**9, "1m30s"),
        (3600 * 10**9, "1h0m0s"),
        (3723 * 10**9 + 5 * 10**8, "1h2m3.5s"),
        (250 * 10**6, "250ms"),
        (1_500, "1.5µs"),
        (7, "7ns"),
        (-2 * 10**9, "-2s"),
    ],
)
def test_go_duration(ns: int, text: str) -> None:
    assert gostr.duration(ns) == text


@pytest.mark.parametrize(("text", "ns"), [("1s", 10**9), ("1500ms", 1_500_000_000), ("2", 2 * 10**9), ("1m30s", 90 * 10**9), ("0.5s", 5 * 10**8)])
def test_parse_duration(text: str, ns: int) -> None:
    assert gostr.parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "s", "1x", "1s2", "nan", "--1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        gostr.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "quoted"),
    [("10.244.0.7:5000", '"10.244.0.7:5000"'), ('a"b\\c', '"a\\"b\\\\c"'), ("tab\there\n", '"tab\\there\\n"'), ("\x01", '"\\x01"'), ("é", '"é"')],
)
def test_go_quote(text: str, quoted: str) -> None:
    assert gostr.quote(text) == quoted


def test_grpc_code_names_are_gos() -> None:
    assert [gostr.grpc_code_name(c) for c in (1, 4, 5, 12, 14, 16)] == [
        "Canceled",
        "DeadlineExceeded",
        "NotFound",
        "Unimplemented",
        "Unavailable",
        "Unauthenticated",
    ]


@given(st.binary(max_size=70_000), st.sampled_from([wsframe.OP_BINARY, wsframe.OP_TEXT]), st.booleans())
def test_frames_roundtrip(payload: bytes, opcode: int, masked: bool) -> None:
    data = wsframe.encode_frame(opcode, payload, mask=masked)
    reader = wsframe.FrameReader(expect_masked=masked)
    # Byte by byte for short frames, in two halves for long ones: reassembly must not care.
    pieces = [data[i : i + 1] for i in range(len(data))] if len(data) < 64 else [data[: len(data) // 2], data[len(data) // 2 :]]
    out = []
    for piece in pieces:
        out += reader.feed(piece)
    assert out == [(opcode, payload)]


def test_fragmented_message_with_interleaved_ping() -> None:
    reader = wsframe.FrameReader(expect_masked=False)
    data = (
        wsframe.encode_frame(wsframe.OP_BINARY, b"ab", mask=False, fin=False)
        + wsframe.encode_frame(wsframe.OP_PING, b"p", mask=False)
        + wsframe.encode_frame(wsframe.OP_CONT, b"cd", mask=False)
    )
    assert reader.feed(data) == [(wsframe.OP_PING, b"p"), (wsframe.OP_BINARY, b"abcd")]


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x82 | 0x40, 0x00]),  # reserved bit
        bytes([0x83, 0x00]),  # unknown opcode
        bytes([0x80, 0x00]),  # continuation without a message
        bytes([0x89, 0x7E, 0x00, 0x80]) + b"x" * 128,  # oversized control frame
        bytes([0x82, 0x80, 1, 2, 3, 4]),  # masked frame from a server
    ],
)
def test_bad_frames_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(wsframe.ProtocolError):
        wsframe.FrameReader(expect_masked=False).feed(data)


def test_accept_key_rfc_example() -> None:
    assert wsframe.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_label_selector_forms() -> None:
    labels = {"app": "a", "tier": "web"}
    assert label_selector("app=a,tier in (web,db)")(labels)
    assert not label_selector("app notin (a)")(labels)
    assert label_selector("!missing,tier")(labels)
    assert label_selector("app==a,tier!=db")(labels)


def _pod(*containers: dict, init: list[dict] | None = None) -> dict:
    return {"metadata": {"name": "p"}, "spec": {"containers": list(containers), "initContainers": init or []}}


def test_resolve_orders_by_container_then_gating_order() -> None:
    pod = _pod(
        {"name": "a", "readinessProbe": {"grpc": {"port": 1}}, "startupProbe": {"grpc": {"port": 2}, "timeoutSeconds": 3}},
        {"name": "b", "livenessProbe": {"grpc": {"port": 3, "service": "s"}}},
    )
    targets = resolve(pod)
    assert [(t.container, t.kind, t.port, t.service, t.timeout_ns) for t in targets] == [
        ("a", "startup", 2, "", 3 * 10**9),
        ("a", "readiness", 1, "", 10**9),
        ("b", "liveness", 3, "s", 10**9),
    ]


def test_resolve_grpc_mode_tls_field() -> None:
    (target,) = resolve(_pod({"name": "a", "readinessProbe": {"grpc": {"port": 1, "mode": "TLS"}}}))
    assert target.tls


def test_resolve_errors() -> None:
    with pytest.raises(UsageError):
        resolve(_pod({"name": "a"}), container="b")
    with pytest.raises(NothingToProbe, match="has no gRPC readiness probe"):
        resolve(_pod({"name": "a", "livenessProbe": {"grpc": {"port": 1}}}), kinds=["readiness"])
    with pytest.raises(NothingToProbe, match="invalid grpc port"):
        resolve(_pod({"name": "a", "livenessProbe": {"grpc": {"port": "grpc"}}}))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
probe_keys = st.sampled_from(["grpc", "port", "service", "mode", "timeoutSeconds", "httpGet", "exec", "readinessProbe", "livenessProbe", "startupProbe", "name", "containers", "initContainers", "restartPolicy", "spec", "metadata"])
pod_like = st.recursive(
    json_values,
    lambda children: st.dictionaries(probe_keys, children, max_size=5) | st.lists(children, max_size=3),
    max_leaves=40,
)


@given(pod_like)
def test_resolve_never_raises_anything_but_a_clean_error(pod) -> None:
    if not isinstance(pod, dict):
        pod = {"spec": pod, "metadata": pod}
    try:
        resolve(pod)
    except (NothingToProbe, UsageError) as exc:
        assert str(exc).startswith("error: ") and "\n" not in str(exc)


def test_completion_knows_every_flag_of_the_parsers() -> None:
    """Completion's flag lists are written out (commands/ cannot import cli); this keeps them true to the parsers."""
    from kubectl_grpcprobe import cli
    from kubectl_grpcprobe.commands import completion

    def options(parser):
        for action in parser._actions:
            for flag in action.option_strings:
                yield flag, action.nargs != 0

    for parser, listed in ((cli.probe_parser(), completion.PROBE_FLAGS), (cli.toggle_parser(), completion.TOGGLE_FLAGS)):
        for flag, takes_value in options(parser):
            if takes_value:
                assert flag in completion.VALUE_FLAGS, flag
            if flag.startswith("--"):
                assert flag in listed or flag in completion.CONNECTION_FLAGS, flag
    for flag, takes_value in options(cli.sandbox_parser()._subparsers._group_actions[0].choices["up"]):
        if takes_value:
            assert flag in completion.VALUE_FLAGS, flag
