"""A small TF Serving REST client for exported tfhier models (Python standard library only).

    python export/client.py --model_name=demo sample --num_samples=2 --num_steps=300 --seed=7,8
    python export/client.py --model_name=demo score --npz=runs/demo/samples/step_0002000.npz
    python export/client.py --model_name=demo continue --npz=prefix.npz --num_steps=200
    python export/client.py --model_name=demo metadata

Global options come before the command: ``--server`` (default
http://localhost:8501), ``--model_name``, ``--version`` (default: the version
TF Serving serves, the highest), ``--timeout``.  Each command sends one REST
predict request, ``POST <server>/v1/models/<name>[/versions/<v>]:predict``,
in TF Serving's columnar ("inputs") format and prints the outputs as JSON
(``--out=FILE`` writes them to a file instead; ``--dry_run`` prints the
request without sending it).  The request bodies::

    score     {"signature_name": "serving_default",
               "inputs": {"x": [[[dx, dy, pen], ...], ...], "lengths": [T1, ...], "seed": [0, 0]}}
    sample    {"signature_name": "sample",
               "inputs": {"num_samples": 2, "num_steps": 300, "seed": [7, 8], "temperature": 1.0}}
    continue  {"signature_name": "continue",
               "inputs": {"prefix": [[[...], ...], ...], "prefix_lengths": [T1, ...], "num_steps": 200,
                          "seed": [0, 0], "temperature": 1.0}}

Each input is one JSON value holding the whole batch (nested lists for
tensors, a bare number for a scalar).  TF Serving answers
``{"outputs": {"elbo": [...], "nll": [...], "kl": [[...]], "num_steps": [...]}}``
for scoring and, for a signature with a single output, the bare value:
``{"outputs": [[[...]]]}`` (this client names it: ``samples`` /
``continuations``).  A rejected request is answered with HTTP 400 and
``{"error": "..."}``; the client prints the message and exits with status 1.

Sequences for ``score`` / ``continue`` come from ``--npz`` (arrays ``x`` or
``prefix`` or ``samples`` [B, T, D], optional ``lengths`` / ``prefix_lengths``
[B]; a file written by tfhier's sampler works as is) or ``--json`` (an object
with the same keys; its rows may have different lengths: they are padded with
zero steps).  Without lengths every row counts as all its steps.  Values
are in the model's space (for handwriting: offsets divided by the
``offset_scale`` in the export's ``assets.extra/tfhier_export.json``).
"""

from __future__ import annotations

import argparse
import array
import ast
import http.client as httplib
import json
import socket
import sys
import time
import urllib.parse
import zipfile

#: output names per signature, for responses TF Serving unwraps (single-output signatures)
OUTPUTS = {"serving_default": ["elbo", "nll", "kl", "num_steps"], "sample": ["samples"],
           "continue": ["continuations"]}

#: the largest answer read (bytes); a bigger one is refused rather than filling the memory
DEFAULT_MAX_RESPONSE_BYTES = 256 * 2 ** 20
#: the most numbers one .npy array may hold (a header can declare any shape)
MAX_ARRAY_ELEMENTS = 50_000_000

_NPY_TYPES = {"f4": ("f", float), "f8": ("d", float), "i1": ("b", int), "u1": ("B", int), "i2": ("h", int),
              "i4": ("i", int), "i8": ("q", int), "b1": ("B", bool)}


class ClientError(Exception):
    """A problem with the client's input or the server's answer (the message says which)."""


# --------------------------------------------------------------------------------------- reading data

def _nest(flat, shape):
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def read_npy(data: bytes, name="array"):
    """A .npy file's contents as nested lists (little- or big-endian numeric/bool arrays, C order)."""
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise ClientError(f"{name}: not a .npy array")
    major = data[6]
    header_len_size = 2 if major == 1 else 4
    header_len = int.from_bytes(data[8:8 + header_len_size], "little")
    start = 8 + header_len_size
    try:
        header = ast.literal_eval(data[start:start + header_len].decode("latin1"))
        descr, shape = header["descr"], tuple(header["shape"])
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError("shape entries must be integers >= 0")
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError) as e:
        raise ClientError(f"{name}: unreadable .npy header ({type(e).__name__})") from None
    # Building nested lists costs the product of the dimensions up to the first 0, whatever the data holds.
    cells = 1
    for s in shape:
        if s == 0:
            break
        cells *= s
        if cells > MAX_ARRAY_ELEMENTS:
            raise ClientError(f"{name}: shape {shape} is larger than this client handles "
                              f"({MAX_ARRAY_ELEMENTS:,} numbers)")
    if header.get("fortran_order"):
        raise ClientError(f"{name}: Fortran-ordered arrays are not supported; save a C-ordered array")
    if not isinstance(descr, str) or descr[1:] not in _NPY_TYPES:
        raise ClientError(f"{name}: unsupported dtype {descr!r} (use float32/64, int8-64, uint8 or bool)")
    code, convert = _NPY_TYPES[descr[1:]]
    values = array.array(code)
    count = 1
    for s in shape:
        count *= s
    payload = data[start + header_len:start + header_len + count * values.itemsize]
    values.frombytes(payload)
    if descr[0] == ">" and sys.byteorder == "little" or descr[0] == "<" and sys.byteorder == "big":
        values.byteswap()
    if len(values) != count:
        raise ClientError(f"{name}: truncated .npy data")
    return _nest([convert(v) for v in values], list(shape))


def read_npz(path) -> dict:
    """The arrays of an ``.npz`` file (``numpy.savez``/``savez_compressed``) as nested lists."""
    try:
        with zipfile.ZipFile(path) as z:
            return {n[:-4]: read_npy(z.read(n), f"{path}:{n}") for n in z.namelist() if n.endswith(".npy")}
    except (OSError, zipfile.BadZipFile) as e:
        raise ClientError(f"cannot read --npz={path}: {e}") from None


def read_sequences(args, names, length_names):
    """``(batch, lengths)`` from ``--npz`` or ``--json``: the first of ``names`` present, lengths if given."""
    if bool(args.npz) == bool(args.json):
        raise ClientError("give the sequences with exactly one of --npz=FILE or --json=FILE")
    if args.npz:
        arrays, source = read_npz(args.npz), args.npz
    else:
        try:
            with open(args.json, encoding="utf-8") as f:
                arrays = json.load(f)
        except (OSError, json.JSONDecodeError, RecursionError, UnicodeDecodeError) as e:
            raise ClientError(f"cannot read --json={args.json}: {e}") from None
        source = args.json
        if not isinstance(arrays, dict):
            raise ClientError(f"{source} must hold a JSON object with key {names[0]!r}")
    key = next((n for n in names if n in arrays), None)
    if key is None:
        raise ClientError(f"{source} has none of the arrays {names} (has {sorted(arrays)})")
    batch = arrays[key]
    if not isinstance(batch, list) or not batch or not isinstance(batch[0], list):
        raise ClientError(f"{source}: {key} must be a batch of sequences [B, T, D]")
    length_key = next((n for n in length_names if n in arrays), None)
    lengths = arrays[length_key] if length_key else [len(seq) for seq in batch]
    if args.max_sequences:
        batch, lengths = batch[:args.max_sequences], lengths[:args.max_sequences]
    # Rows of different lengths (a JSON list of sequences) are padded with zero steps to the longest.
    longest = max(len(seq) for seq in batch)
    if any(len(seq) != longest for seq in batch):
        dim = len(next(seq for seq in batch if seq)[0])
        batch = [list(seq) + [[0.0] * dim for _ in range(longest - len(seq))] for seq in batch]
    return batch, lengths


def parse_seed(text):
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) != 2:
        raise ClientError(f"--seed must be two integers like 7,8; got {text!r}")
    return parts


# ------------------------------------------------------------------------------------------- requests

def build_request(args) -> dict:
    """The predict request body for ``args.command``."""
    if args.command == "score":
        x, lengths = read_sequences(args, ["x", "samples"], ["lengths"])
        return {"signature_name": "serving_default",
                "inputs": {"x": x, "lengths": lengths, "seed": parse_seed(args.seed)}}
    if args.command == "sample":
        return {"signature_name": "sample",
                "inputs": {"num_samples": args.num_samples, "num_steps": args.num_steps,
                           "seed": parse_seed(args.seed), "temperature": float(args.temperature)}}
    if args.command == "continue":
        prefix, lengths = read_sequences(args, ["prefix", "x", "samples"], ["prefix_lengths", "lengths"])
        return {"signature_name": "continue",
                "inputs": {"prefix": prefix, "prefix_lengths": lengths, "num_steps": args.num_steps,
                           "seed": parse_seed(args.seed), "temperature": float(args.temperature)}}
    raise ClientError(f"unknown command {args.command!r}")


def model_url(server, model_name, version=None) -> str:
    url = f"{server.rstrip('/')}/v1/models/{model_name}"
    return url + (f"/versions/{version}" if version is not None else "")


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ClientError(f"{what} is not JSON: {e}") from None
    except RecursionError:
        raise ClientError(f"{what} is JSON nested too deeply to be a model's answer") from None


def http(url, body=None, timeout=60.0, max_bytes=DEFAULT_MAX_RESPONSE_BYTES):
    """GET (``body`` None) or POST JSON; returns the decoded JSON answer or raises ClientError.

    ``timeout`` is one deadline for the whole request (connecting, sending, and reading the answer), not a
    per-read timeout a trickling server could keep resetting; an answer over ``max_bytes`` is refused.
    """
    deadline = time.monotonic() + timeout
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"--server must be an http:// or https:// address, got {url!r}")
    connection_type = httplib.HTTPSConnection if parts.scheme == "https" else httplib.HTTPConnection
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    data = None if body is None else json.dumps(body).encode("utf-8")

    def remaining():
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClientError(f"{url} did not answer within --timeout={timeout:g} s")
        return left

    conn = connection_type(parts.hostname, parts.port, timeout=remaining())
    try:
        conn.request("GET" if body is None else "POST", path or "/", body=data,
                     headers={"Content-Type": "application/json"})
        sock = conn.sock  # the response keeps reading from it after the connection lets go of it
        sock.settimeout(remaining())
        response = conn.getresponse()
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ClientError(f"{url} answers {int(declared):,} bytes, more than --max_response_bytes={max_bytes:,}")
        chunks, size = [], 0
        while True:
            sock.settimeout(remaining())
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ClientError(f"{url} answered more than --max_response_bytes={max_bytes:,} bytes")
            chunks.append(chunk)
            remaining()
        raw = b"".join(chunks)
        status = response.status
    except ClientError:
        raise
    except (socket.timeout, TimeoutError):
        raise ClientError(f"{url} did not answer within --timeout={timeout:g} s") from None
    except httplib.HTTPException as e:
        raise ClientError(f"{url} did not answer in HTTP ({type(e).__name__}: {str(e)[:200]})") from None
    except OSError as e:
        raise ClientError(f"cannot reach {url}: {e.strerror or e}") from None
    finally:
        conn.close()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(f"{url} answered {status} with bytes that are not UTF-8 text") from None
    if status >= 400:
        message = text
        try:
            parsed = json.loads(text)
            if isinstance(parsed, dict) and "error" in parsed:
                message = parsed["error"]
        except (json.JSONDecodeError, RecursionError):
            pass
        raise ClientError(f"server answered {status} for {url}: {str(message)[:2000]}")
    return _json(text, f"the answer of {url}")


def named_outputs(signature, response) -> dict:
    """``{output name: value}`` from a columnar predict response."""
    if not isinstance(response, dict) or "outputs" not in response:
        raise ClientError(f"unexpected answer (no 'outputs'): {str(response)[:200]}")
    outputs = response["outputs"]
    names = OUTPUTS[signature]
    if len(names) == 1 and not (isinstance(outputs, dict) and set(outputs) == set(names)):
        return {names[0]: outputs}
    return outputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="client.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://localhost:8501", help="TF Serving REST address")
    parser.add_argument("--model_name", required=True, help="the served model's name")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the served one)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the whole request may take")
    parser.add_argument("--max_response_bytes", type=int, default=DEFAULT_MAX_RESPONSE_BYTES,
                        help="refuse answers larger than this")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p, sequences=False):
        p.add_argument("--seed", default="0,0", help="two integers: the same seed gives the same answer")
        p.add_argument("--out", default=None, help="write the outputs (JSON) here instead of printing them")
        p.add_argument("--dry_run", action="store_true", help="print the request instead of sending it")
        if sequences:
            p.add_argument("--npz", default=None, help=".npz file with the sequences")
            p.add_argument("--json", default=None, help="JSON file with the sequences")
            p.add_argument("--max_sequences", type=int, default=0, help="send only the first N sequences")

    score = commands.add_parser("score", help="ELBO, NLL and KL per latent layer of sequences")
    common(score, sequences=True)
    sample = commands.add_parser("sample", help="draw new sequences")
    common(sample)
    sample.add_argument("--num_samples", type=int, default=1)
    sample.add_argument("--num_steps", type=int, default=300)
    sample.add_argument("--temperature", type=float, default=1.0)
    cont = commands.add_parser("continue", help="continue given prefixes")
    common(cont, sequences=True)
    cont.add_argument("--num_steps", type=int, default=300)
    cont.add_argument("--temperature", type=float, default=1.0)
    commands.add_parser("metadata", help="the served signatures (GET .../metadata)")
    commands.add_parser("status", help="the served versions and their state (GET the model URL)")
    args = parser.parse_args(argv)

    url = model_url(args.server, args.model_name, args.version)
    try:
        if args.command == "metadata":
            print(json.dumps(http(url + "/metadata", timeout=args.timeout, max_bytes=args.max_response_bytes), indent=2))
            return 0
        if args.command == "status":
            print(json.dumps(http(url, timeout=args.timeout, max_bytes=args.max_response_bytes), indent=2))
            return 0
        body = build_request(args)
        if args.dry_run:
            print(json.dumps({"url": url + ":predict", "body": body}))
            return 0
        outputs = named_outputs(body["signature_name"], http(url + ":predict", body, timeout=args.timeout,
                                                             max_bytes=args.max_response_bytes))
    except ClientError as e:
        print(f"client.py: error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(outputs)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"wrote {', '.join(outputs)} to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
