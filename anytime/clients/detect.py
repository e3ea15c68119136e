"""One image through the gateway: the request, a readable summary of the answer, and the boxes drawn.

This module is the whole of the thin client: it needs grpcio, protobuf, numpy and Pillow, never torch, so an
application can call the service without the model stack. ``python clients/detect.py`` runs its ``main`` from a
checkout without installing the package; ``anytime detect`` runs the same code. The helpers for bytes, channels
and credentials live here too, since ``loadgen`` sends images the same way.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import grpc

from anytime.serving.api import anytime_pb2 as pb
from anytime.serving.api import anytime_pb2_grpc as pb_grpc

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


def letterboxed_request(data: bytes, size: int) -> tuple[pb.DetectRequest, float, tuple[int, int]]:
    """A request whose image is letterboxed here, as the gateway would (``anytime.imaging.letterbox``, the very
    function), and sent as raw pixels of the resized image without its padding; with the scale and the original
    (height, width) that ``restore_boxes`` needs to map the answer's boxes back onto the original image.

    The gateway then only pads: no decoding, no resizing on its cores. A large photo costs the network less too
    (a 256 px image is 192 KB raw, often less than the photo's file); a small PNG may cost more bytes than it saves.
    """
    import numpy as np

    from anytime.imaging import letterbox, open_image

    image = open_image(data, max_pixels=10**9)  # the client's own photo: the gateway's limit is for others'
    height, width = image.height, image.width
    pixels, scale = letterbox(image, size)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    raw = np.ascontiguousarray(pixels[:, :h, :w].transpose(1, 2, 0))
    return pb.DetectRequest(raw=pb.RawImage(data=raw.tobytes(), height=h, width=w, channels=3)), scale, (height, width)


def restore_boxes(response: pb.DetectResponse, scale: float, size: tuple[int, int]) -> pb.DetectResponse:
    """The answer to a ``letterboxed_request`` with its boxes in the original image's pixels (in place)."""
    height, width = size
    kept = []
    for d in response.detections:
        x1, x2 = (min(max(v / scale, 0.0), width) for v in (d.x1, d.x2))
        y1, y2 = (min(max(v / scale, 0.0), height) for v in (d.y1, d.y2))
        if x2 > x1 and y2 > y1:
            d.x1, d.y1, d.x2, d.y2 = x1, y1, x2, y2
            kept.append(d)
    del response.detections[:]
    response.detections.extend(kept)
    return response


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
           tls_ca: str | Path | None = None, request_id: str = "", progressive: bool = False,
           letterbox: int | None = None, option: str = ""):
    """One Detect call; raises ``grpc.RpcError`` with the gateway's status code on failure.

    With ``progressive``, a generator of every exit's answer as it arrives (DetectProgressive), the last one
    marked ``final``. With ``letterbox`` (a size; 0: the gateway's ``max_image_size``, the largest input of any
    option, which the gateway scales down to the option it chooses), the image is letterboxed here and sent as raw
    pixels, and the boxes mapped back (``letterboxed_request``). ``option`` ("128/2") pins one option."""
    if letterbox is not None:
        info = model_info(address, token, tls_ca) if not letterbox else None
        size = letterbox or info.max_image_size or info.image_size
        request, scale, original = letterboxed_request(data, size)
        restore = lambda r: restore_boxes(r, scale, original)  # noqa: E731
    else:
        request = pb.DetectRequest(encoded=data)
        restore = lambda r: r  # noqa: E731
    request.budget_ms, request.min_exit, request.max_exit = budget_ms, min_exit, max_exit
    request.score_threshold, request.request_id, request.option = score_threshold, request_id, option
    timeout = deadline_ms / 1e3 if deadline_ms is not None else None
    if progressive:
        return _progressive(address, tls_ca, request, timeout, auth_metadata(token), restore)
    with open_channel(address, tls_ca) as channel:
        return restore(pb_grpc.DetectorStub(channel).Detect(request, timeout=timeout, metadata=auth_metadata(token)))


def model_info(address: str, token: str | None = None, tls_ca: str | Path | None = None) -> pb.ModelInfo:
    with open_channel(address, tls_ca) as channel:
        return pb_grpc.DetectorStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=10,
                                                          metadata=auth_metadata(token))


def _progressive(address, tls_ca, request, timeout, metadata, restore):
    with open_channel(address, tls_ca) as channel:
        for response in pb_grpc.DetectorStub(channel).DetectProgressive(request, timeout=timeout, metadata=metadata):
            yield restore(response)


def response_dict(response: pb.DetectResponse, client_ms: float | None = None) -> dict:
    """The answer as JSON-ready data, zero-valued fields included (``budget_met: false`` must show); with
    ``client_ms``, the client's own latency and whether that met the budget (the client's clock decides)."""
    from google.protobuf.json_format import MessageToDict

    out = MessageToDict(response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if client_ms is not None:
        out["client_ms"] = client_ms
        out["client_budget_met"] = client_ms <= response.timing.budget_ms
    return out


def format_response(response: pb.DetectResponse, image_name: str = "") -> str:
    """A few lines for people: exit, budget, timing, then one line per detection."""
    t = response.timing
    available = ", ".join(map(str, response.exits_available)) or "?"
    met = "met" if response.budget_met else "MISSED"
    size = f" at {response.image_size} px" if response.image_size else ""
    lines = [f"{image_name + ': ' if image_name else ''}exit {response.exit} of [{available}]{size}, "
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

    from anytime.imaging import to_rgb  # Pillow and numpy only

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


class ClientError(ValueError):
    """A problem with what the user asked for: one clear line, exit status 2."""


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """--server, --token and --tls-ca: how every client reaches the gateway."""
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT", help="gateway address (default: %(default)s)")
    p.add_argument("--token", default=None, help="bearer token, for a gateway started with --token")
    p.add_argument("--tls-ca", type=Path, default=None, metavar="FILE",
                   help="PEM CA certificate: connect with TLS, verified against it")


def check_tls_ca(path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise ClientError(f"--tls-ca {path}: no such file")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``detect`` (shared by ``anytime detect`` and ``clients/detect.py``)."""
    p.add_argument("image", type=Path, help="image file (any format Pillow reads)")
    add_connection_arguments(p)
    p.add_argument("--budget-ms", type=float, default=0.0,
                   help="latency budget in ms (default: none, so the gateway's default budget)")
    p.add_argument("--deadline-ms", type=float, default=None, help="gRPC deadline in ms (default: none)")
    p.add_argument("--min-exit", type=int, default=0, help="shallowest exit allowed (default: the first)")
    p.add_argument("--max-exit", type=int, default=0, help="deepest exit allowed (default: the last)")
    p.add_argument("--option", default="", metavar="SIZE/EXIT",
                   help="pin one option, such as 128/2 (input size/exit; GetModelInfo lists the options; default: the "
                        "gateway chooses size and exit)")
    p.add_argument("--score-threshold", type=float, default=0.0,
                   help="drop detections scoring below this (default: the model's own threshold)")
    p.add_argument("--progressive", action="store_true",
                   help="print every exit's detections as they arrive (DetectProgressive), the last one the answer")
    p.add_argument("--json", action="store_true", help="print only the response as JSON (one line per exit with "
                                                       "--progressive)")
    p.add_argument("--draw", type=Path, metavar="OUT.png", help="write the image with the detections drawn")
    add_letterbox_argument(p)


def add_letterbox_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--letterbox", type=int, nargs="?", const=0, default=None, metavar="SIZE",
                   help="letterbox the image here (to SIZE, default: the gateway's max_image_size, the largest input "
                        "of any option) and send raw pixels: the gateway decodes nothing and resizes only down to the "
                        "option it chooses; boxes are mapped back to the image")


def run(args: argparse.Namespace, prog: str = "detect") -> int:
    """Send the image, print the answer; ``ClientError`` for the user's mistakes, exit 1 for the server's."""
    check_tls_ca(args.tls_ca)
    if args.deadline_ms is not None and args.deadline_ms <= 0:
        raise ClientError(f"--deadline-ms must be > 0, got {args.deadline_ms:g}")
    try:
        data = image_bytes(args.image)
    except OSError as e:
        raise ClientError(f"cannot read image {args.image}: {e.strerror or e}") from None
    t0 = time.perf_counter()
    if args.letterbox is not None and args.letterbox < 0:
        raise ClientError(f"--letterbox must be a size > 0 (or given alone), got {args.letterbox}")
    kwargs = dict(min_exit=args.min_exit, max_exit=args.max_exit, score_threshold=args.score_threshold,
                  option=args.option,
                  deadline_ms=args.deadline_ms, token=args.token, tls_ca=args.tls_ca, request_id=args.image.name,
                  letterbox=args.letterbox)
    try:
        if args.progressive:
            response = None
            for response in detect(args.server, data, args.budget_ms, progressive=True, **kwargs):
                at_ms = (time.perf_counter() - t0) * 1e3
                if args.json:
                    print(json.dumps(response_dict(response, at_ms)), flush=True)
                else:
                    print(f"{at_ms:7.1f} ms  exit {response.exit}{' (final)' if response.final else ''}: "
                          f"{len(response.detections)} detections", flush=True)
        else:
            response = detect(args.server, data, args.budget_ms, **kwargs)
    except grpc.RpcError as e:
        print(f"{prog}: error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except ValueError as e:  # anytime.imaging.BadImage: --letterbox decodes here, an image this client cannot read
        raise ClientError(f"cannot letterbox {args.image}: {e}") from None
    client_ms = (time.perf_counter() - t0) * 1e3
    if args.draw:
        try:
            draw_detections(args.image, response, args.draw)
        except (OSError, ValueError) as e:
            raise ClientError(f"cannot draw onto {args.image} or write {args.draw}: {e}") from None
    if args.json:
        if not args.progressive:
            print(json.dumps(response_dict(response, client_ms)))
    else:
        print(format_response(response, args.image.name))
        print(f"client: {client_ms:.1f} ms end to end, "
              f"{'within' if client_ms <= response.timing.budget_ms else 'OVER'} the {response.timing.budget_ms:.1f} ms budget")
        if args.draw:
            print(f"drawn: {args.draw}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python clients/detect.py IMAGE --server HOST:PORT --budget-ms B [--json] [--draw OUT.png]``."""
    parser = argparse.ArgumentParser(prog="detect", description="Send one image to the anytime gateway with a "
                                     "latency budget and print what came back.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ClientError as e:
        print(f"detect: error: {e}", file=sys.stderr)
        return 2
