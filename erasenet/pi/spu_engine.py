"""One private inference of an exported network under SecretFlow SPU's Cheetah (two parties, one process).

Runs in the private-inference environment (``python -m erasenet.pi setup``: numpy < 2, jax, spu), never under
torch: ``python spu_engine.py EXPORT_DIR IMAGE.npy OUT.json``. The network (``network.json``, ``weights.npz``,
read by ``reference.load``) becomes one JAX function; SPU compiles it and the two parties run it as threads over
SPU's in-memory link. Party 0 holds the model's arrays as secrets, party 1 the image; the graph (shapes, which
elements keep a ReLU) is public, as in every ReLU-reduction protocol. A ``relu`` op compares only the elements its
mask keeps: they are gathered, rectified and put back by public permutations, which cost no communication, so a
linearised element costs nothing. SPU's profile (party 0's view) gives bytes, send actions and time per MPC
kernel; party 1 sends what party 0 receives. The result goes to OUT.json as plain numbers.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402  (this file runs as a script, beside reference.py)

FRACTION_BITS = 18  # SPU's default for the 64-bit ring
ARRAY_FIELDS = ("weight", "bias", "scale", "shift", "slope", "coefficients", "polynomial")
_ROW = re.compile(r"- (\S+), executed (\d+) times, duration ([0-9.e+-]+)s, send bytes (\d+) recv bytes (\d+), "
                  r"send actions (\d+), recv actions (\d+)")
_LINK = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")


def secret_arrays(graph: dict) -> list[str]:
    """The keys of the arrays party 0 holds (weights, biases, slopes, coefficients), in op order."""
    return [op[f] for op in graph["ops"] for f in ARRAY_FIELDS if op.get(f)]


def build_function(graph: dict, arrays: dict[str, np.ndarray]):
    """``f(*model_arrays, image)``: the network as a JAX function; the masks are compile-time constants."""
    import jax.numpy as jnp
    from jax import lax

    keys = secret_arrays(graph)

    def masked_relu(op, x, params):
        """Compare only the kept elements; the others pass through, or take the op's polynomial (evaluated on
        those elements only, so that its multiplications are what the network needs)."""
        if op["kept"] == op["elements"]:
            return jnp.maximum(x, 0)
        polynomial = op.get("polynomial")
        if op["kept"] == 0:
            return x if polynomial is None else reference.polynomial(x, params[polynomial])
        keep = np.flatnonzero(reference.kept_mask(op, arrays).reshape(-1))
        linear = np.flatnonzero(~reference.kept_mask(op, arrays).reshape(-1))
        inverse = np.argsort(np.concatenate([keep, linear]))
        flat = x.reshape(x.shape[0], -1)
        rest = flat[:, linear]
        if polynomial is not None:  # each element's coefficients: its channel's (axis 1), or the site's
            c = params[polynomial]
            per_element = [jnp.broadcast_to(reference.channel(c[k], x.ndim), (1, *x.shape[1:])).reshape(-1)[linear]
                           for k in range(3)]
            rest = per_element[0] * (rest * rest) + per_element[1] * rest + per_element[2]
        out = jnp.concatenate([jnp.maximum(flat[:, keep], 0), rest], axis=1)[:, inverse]
        return out.reshape(x.shape)

    def run(op, args, params):
        if op["op"] == "conv2d":
            y = lax.conv_general_dilated(args[0], params[op["weight"]], op["stride"],
                                         [(q, q) for q in op["padding"]], rhs_dilation=op["dilation"],
                                         feature_group_count=op["groups"],
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            return y + params[op["bias"]].reshape(1, -1, 1, 1)
        if op["op"] == "relu":
            return masked_relu(op, args[0], params)
        return reference.run_op(op, args, params, jnp)

    def f(*flat):
        params = dict(zip(keys, flat[:-1]))
        values = {graph["input"]["name"]: flat[-1]}
        for op in graph["ops"]:
            values[op["output"]] = run(op, [values[i] for i in op["inputs"]], params)
        return values[graph["output"]]

    return f, keys


def parse_profile(text: str) -> dict:
    """Party 0's profile from SPU's log: rows per level (``pphlo``, ``hal``, ``mpc``) and the link totals."""
    levels, current, link = {"pphlo": [], "hal": [], "mpc": []}, None, None
    for line in text.splitlines():
        if "HLO profiling" in line:
            current = "pphlo"
        elif "HAL profiling" in line:
            current = "hal"
        elif "MPC profiling" in line:
            current = "mpc"
        elif (m := _LINK.search(line)):
            link = dict(zip(("send_bytes", "recv_bytes", "send_actions", "recv_actions"), map(int, m.groups())))
            current = None
        elif current and (m := _ROW.search(line)):
            name, n, secs, sb, rb, sa, ra = m.groups()
            levels[current].append({"name": name, "calls": int(n), "seconds": float(secs), "send_bytes": int(sb),
                                    "recv_bytes": int(rb), "send_actions": int(sa), "recv_actions": int(ra)})
    return {"levels": levels, "link": link}


def run_private_inference(export_dir: str, image: np.ndarray, fraction_bits: int = FRACTION_BITS) -> dict:
    import spu
    import spu.api as spu_api
    import spu.libspu as libspu
    import spu.utils.frontend as frontend

    graph, arrays = reference.load(export_dir)
    f, keys = build_function(graph, arrays)
    model = [arrays[k].astype(np.float32) for k in keys]
    x = np.asarray(image, dtype=np.float32)[None]
    names = [f"m{i}" for i in range(len(model))] + ["image"]
    executable, _ = frontend.compile(frontend.Kind.JAX, f, (*model, x), {}, names,
                                     [libspu.Visibility.VIS_SECRET] * len(names), lambda out: ["logits"])
    config = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.CHEETAH, field=libspu.FieldType.FM64,
                                  fxp_fraction_bits=fraction_bits)
    io = spu_api.Io(2, config)
    shares = [io.make_shares(a, libspu.Visibility.VIS_SECRET, owner_rank=0) for a in model]
    shares.append(io.make_shares(x, libspu.Visibility.VIS_SECRET, owner_rank=1))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "spu.log"
        options = libspu.logging.LogOptions()
        options.enable_console_logger, options.system_log_path = False, str(log_path)
        libspu.logging.setup_logging(options)
        desc = libspu.link.Desc()
        for rank in range(2):
            desc.add_party(f"party{rank}", f"thread_{rank}")
        outputs, errors = [None, None], []

        def party(rank: int) -> None:
            try:
                own = libspu.RuntimeConfig(config)
                own.enable_pphlo_profile = own.enable_hal_profile = rank == 0  # party 0's view suffices
                rt = spu_api.Runtime(libspu.link.create_mem(desc, rank), own)
                for name, share in zip(executable.input_names, shares):
                    rt.set_var(name, share[rank])
                rt.run(executable)
                outputs[rank] = rt.get_var(executable.output_names[0])
            except BaseException as err:  # reported by the main thread
                errors.append(f"party {rank}: {type(err).__name__}: {err}")

        threads = [threading.Thread(target=party, args=(r,)) for r in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        if errors:
            raise RuntimeError("; ".join(errors))
        text = log_path.read_text() if log_path.exists() else ""
    logits = np.asarray(io.reconstruct(outputs), dtype=np.float64).reshape(-1)
    return {"logits": logits.tolist(), "seconds": seconds, "profile": parse_profile(text),
            "spu_version": spu.__version__, "protocol": "CHEETAH", "field": "FM64", "ring_bits": 64,
            "fraction_bits": fraction_bits, "relus": graph["relus"],
            "plaintext_logits": reference.forward(graph, arrays, x.astype(np.float64))[0].tolist()}


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: python spu_engine.py EXPORT_DIR IMAGE.npy OUT.json [FRACTION_BITS]")
    result = run_private_inference(sys.argv[1], np.load(sys.argv[2]),
                                   int(sys.argv[4]) if len(sys.argv) == 5 else FRACTION_BITS)
    Path(sys.argv[3]).write_text(json.dumps(result, indent=1) + "\n")
