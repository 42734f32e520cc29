"""What one private inference cost: SPU's per-kernel profile grouped by kind, and latency estimates.

Pure Python: no torch, no numpy. SPU 0.9.5 profiles each MPC kernel (``enable_hal_profile``) with its calls,
seconds, bytes sent and received and send/receive actions; the kernels do not nest, so they sum to the link's
totals. In a two-party run what party 1 sends is what party 0 receives, so party 0's profile gives both sides.
"""

from __future__ import annotations

# A kernel's kind, by the first pattern its name contains. A ReLU is a comparison (msb_a2b: the sign bit) and a
# multiplexer (mul_a1b: the value times that bit); both belong to it. Convolutions reach the MPC layer as mmul.
KINDS = (
    ("truncation", ("trunc",)),
    ("conv_matmul", ("mmul", "conv", "dot")),
    ("comparison_relu", ("msb", "a1b", "less", "equal", "a2b", "b2a", "_bb", "bit")),
    ("multiplication_polynomial", ("mul_aa", "square", "mul_a")),
)
OTHER = "rest"
KIND_NAMES = tuple(k for k, _ in KINDS) + (OTHER,)

# Network settings of the Cheetah authors' benchmark script (Alibaba-Gemini-Lab/OpenCheetah, scripts/throttle.sh:
# tc tbf rate and netem delay on the loopback device, which both directions share).
SOURCE = ("Alibaba-Gemini-Lab/OpenCheetah scripts/throttle.sh (commit 1b50e8b), the network settings of the "
          "Cheetah paper's benchmarks (Huang et al., USENIX Security 2022)")
SETTINGS = {"LAN": {"bandwidth_mbit_s": 3000.0, "rtt_ms": 0.3}, "WAN": {"bandwidth_mbit_s": 400.0, "rtt_ms": 40.0}}


def kind_of(kernel: str) -> str:
    for kind, patterns in KINDS:
        if any(p in kernel for p in patterns):
            return kind
    return OTHER


def breakdown(mpc_rows: list[dict]) -> dict[str, dict]:
    """Per kind: bytes and send actions of each party, calls and seconds (party 0's profile rows)."""
    out = {k: {"party0_sent_bytes": 0, "party1_sent_bytes": 0, "party0_send_actions": 0, "party1_send_actions": 0,
               "calls": 0, "seconds": 0.0, "kernels": []} for k in KIND_NAMES}
    for row in mpc_rows:
        entry = out[kind_of(row["name"])]
        entry["party0_sent_bytes"] += row["send_bytes"]
        entry["party1_sent_bytes"] += row["recv_bytes"]
        entry["party0_send_actions"] += row["send_actions"]
        entry["party1_send_actions"] += row["recv_actions"]
        entry["calls"] += row["calls"]
        entry["seconds"] += row["seconds"]
        entry["kernels"].append(row["name"])
    for entry in out.values():
        entry["bytes"] = entry["party0_sent_bytes"] + entry["party1_sent_bytes"]
        entry["rounds"] = entry["party0_send_actions"] + entry["party1_send_actions"]
        entry["seconds"] = round(entry["seconds"], 6)
    return out


def latency(compute_seconds: float, total_bytes: int, rounds: int) -> dict[str, dict]:
    """An estimate, not a measurement: compute time (the in-memory run) + every byte over the shared bandwidth +
    half a round trip per send action (an upper bound: messages that overlap in time are counted apart)."""
    estimates = {}
    for name, s in SETTINGS.items():
        transfer = total_bytes * 8 / (s["bandwidth_mbit_s"] * 1e6)
        waiting = rounds * s["rtt_ms"] / 2000
        estimates[name] = {**s, "seconds": round(compute_seconds + transfer + waiting, 3),
                           "transfer_seconds": round(transfer, 3), "round_trip_seconds": round(waiting, 3)}
    return {"estimate": True, "model": "compute_seconds + bytes*8/bandwidth + send_actions*rtt/2",
            "source": SOURCE, "settings": estimates}
