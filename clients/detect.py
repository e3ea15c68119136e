"""One image through the gateway: the request, a readable summary of the answer, and the boxes drawn.

The helpers for bytes, channels and credentials live here too, since ``loadgen`` sends images the same way.
"""

from __future__ import annotations

import io
from pathlib import Path

import grpc

from server import anytime_pb2 as pb
from server import anytime_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the gateway's default limit; bigger images fail there with a clear error
_SENT_AS_IS = ("JPEG", "PNG")  # formats the gateway's contract names; anything else is re-encoded


def image_bytes(path: str | Path) -> bytes:
    """The bytes to send for an image file: the file itself when JPEG or PNG, else the image re-encoded as PNG.

    Bytes PIL cannot make sense of are sent untouched: the gateway is the judge of what it can decode, and its
    INVALID_ARGUMENT says why better than a guess here. Raises OSError when the file cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    data = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format in _SENT_AS_IS:
                return data
            if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
                image = image.convert("RGB")  # e.g. CMYK: PNG cannot hold it
            out = io.BytesIO()
            image.save(out, "PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return data


def open_channel(address: str, tls_ca: str | Path | None = None, aio: bool = False):
    """A channel to the gateway, TLS-verified against ``tls_ca`` when given; ``aio`` for a ``grpc.aio`` one."""
    api = grpc.aio if aio else grpc
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if tls_ca:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
        return api.secure_channel(address, creds, options=options)
    return api.insecure_channel(address, options=options)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The bearer-token metadata a gateway started with ``--token`` requires."""
    return (("authorization", f"Bearer {token}"),) if token else None


def detect(address: str, data: bytes, budget_ms: float = 0.0, *, min_exit: int = 0, max_exit: int = 0,
           score_threshold: float = 0.0, deadline_ms: float | None = None, token: str | None = None,
           tls_ca: str | Path | None = None, request_id: str = "") -> pb.DetectResponse:
    """One Detect call; raises ``grpc.RpcError`` with the gateway's status code on failure."""
    request = pb.DetectRequest(encoded=data, budget_ms=budget_ms, min_exit=min_exit, max_exit=max_exit,
                               score_threshold=score_threshold, request_id=request_id)
    with open_channel(address, tls_ca) as channel:
        stub = pb_grpc.DetectorStub(channel)
        timeout = deadline_ms / 1e3 if deadline_ms is not None else None
        return stub.Detect(request, timeout=timeout, metadata=auth_metadata(token))


def response_dict(response: pb.DetectResponse) -> dict:
    """The answer as JSON-ready data, zero-valued fields included (``budget_met: false`` must show)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def format_response(response: pb.DetectResponse, image_name: str = "") -> str:
    """A few lines for people: exit, budget, timing, then one line per detection."""
    t = response.timing
    available = ", ".join(map(str, response.exits_available)) or "?"
    met = "met" if response.budget_met else "MISSED"
    lines = [f"{image_name + ': ' if image_name else ''}exit {response.exit} of [{available}], "
             f"budget {t.budget_ms:.1f} ms {met} (endpoint {response.endpoint or '?'})",
             f"timing: queue {t.queue_ms:.1f} ms + inference {t.inference_ms:.1f} ms = total {t.total_ms:.1f} ms",
             f"{len(response.detections)} detection{'s' if len(response.detections) != 1 else ''}"
             + (":" if response.detections else "")]
    width = max((len(d.category_name) for d in response.detections), default=0)
    for d in response.detections:
        lines.append(f"  {d.category_name:<{width}}  id {d.category_id:<3}  score {d.score:.3f}  "
                     f"box [{d.x1:.1f}, {d.y1:.1f}, {d.x2:.1f}, {d.y2:.1f}]")
    return "\n".join(lines)


def draw_detections(image_path: str | Path, response: pb.DetectResponse, out: str | Path) -> Path:
    """The image with each detection's box and ``name score`` label, written to ``out`` (format from its suffix)."""
    from PIL import Image, ImageDraw

    from anytime.imaging import to_rgb

    with Image.open(image_path) as im:
        image = to_rgb(im).copy()
    canvas = ImageDraw.Draw(image)
    for d in sorted(response.detections, key=lambda d: d.score):  # best drawn last, on top
        colour = _colour(d.category_id)
        canvas.rectangle([d.x1, d.y1, d.x2, d.y2], outline=colour, width=2)
        label = f"{d.category_name} {d.score:.2f}"
        left, top, right, bottom = canvas.textbbox((d.x1, d.y1), label)
        y = d.y1 - (bottom - top) - 2 if d.y1 >= bottom - top + 2 else d.y1  # above the box when there is room
        canvas.rectangle([d.x1, y, d.x1 + right - left + 2, y + bottom - top + 2], fill=colour)
        canvas.text((d.x1 + 1, y), label, fill="white")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def _colour(category_id: int) -> tuple[int, int, int]:
    """A stable, dark-enough colour per category (matplotlib's tab10 cycle) so white labels stay readable."""
    palette = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
    return palette[category_id % len(palette)]
