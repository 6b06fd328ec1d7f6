"""Mixed precision: the one table from an ``amp`` setting to the dtype that autocast runs in."""

from __future__ import annotations

import torch

from eseg_cli.errors import EsegError

#: ``amp`` setting -> autocast dtype (no setting: full float32)
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str | None, device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (None, ``"none"`` or ``"fp32"``: full precision), checked for ``device``
    when given: fp16 needs CUDA (its gradient scaler and kernels); bf16 works on CPU, CUDA and XLA.
    """
    if amp in (None, "", "none", "fp32"):
        return None
    if amp not in AMP_DTYPES:
        raise EsegError(f"'amp' must be one of {', '.join(AMP_DTYPES)} (or none), got {amp!r}", field="amp")
    if device is not None and amp == "fp16" and torch.device(device).type != "cuda":
        raise EsegError("amp fp16 needs CUDA; use amp bf16 on CPU and XLA", field="amp")
    return AMP_DTYPES[amp]


def autocast(device: torch.device | str, amp: str | None) -> torch.autocast:
    """``torch.autocast`` for ``amp`` on ``device`` (a disabled one for full precision)."""
    dtype = amp_dtype(amp, device)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def cpu_bf16_support() -> dict:
    """What this CPU offers bfloat16 work, as torch's own CPU feature checks report it.

    ``avx512_bf16`` (AVX512-BF16: bf16 dot products) and ``amx_bf16`` (AMX tiles: bf16 matrix multiply) run
    bf16 convolutions and matmuls natively in oneDNN; ``native`` is either. Without them oneDNN converts to
    float32 and back around each op, so bf16 autocast is slower than float32 there.
    """
    cpu = torch.cpu
    avx512_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return {"capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": avx512_bf16, "amx_bf16": amx,
            "native": avx512_bf16 or amx}


#: what the start-up line says a command is doing: training, or running a trained model
TASKS = {"train": "training", "predict": "predicting", "profile": "timing"}


def precision_note(amp: str | None, device: torch.device | str, task: str = "train",
                   quantize: str | None = None) -> str | None:
    """One start-up line on CPU: the bf16 support found (AVX512-BF16, AMX), and what it means for ``amp`` in
    ``task`` (``train``, ``predict`` or ``profile``; the line names what it is doing), or with ``quantize="int8"``
    what int8 is worth on this CPU (:func:`int8_note`). None off the CPU."""
    if torch.device(device).type != "cpu":
        return None
    doing = TASKS[task]
    s = cpu_bf16_support()
    found = " + ".join(n for n, k in (("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16")) if s[k])
    if quantize == "int8":
        return int8_note(s, found, doing)
    flag = "amp bf16 (or auto)" if task == "train" else "--amp bf16"
    if s["native"]:
        tail = (f"{doing} in bf16 autocast" if amp == "bf16"
                else f"{doing} in float32; {flag} runs natively here, faster, not exact")
        return f"CPU: {s['capability']} with {found}: {tail}."
    if amp == "bf16":
        return (f"Warning: CPU: {s['capability']} without AVX512-BF16 or AMX: bf16 autocast is emulated here and "
                "slower than float32; drop amp (--amp none) unless you need bf16's numerics." if task == "train" else
                f"Warning: CPU: {s['capability']} without AVX512-BF16 or AMX: bf16 autocast is emulated here and "
                "slower than float32; leave out --amp unless you need bf16's numerics.")
    return (f"CPU: {s['capability']} without AVX512-BF16 or AMX: {doing} in float32 (bf16 would be emulated and "
            "slower" + ("; amp auto stays float32 here)." if task == "train" else ")."))


def int8_note(support: dict, found: str, doing: str) -> str:
    """What int8 is worth on this CPU, measured (``reports/benchmarks/README.md``, ``int8_routes*.md``): oneDNN runs
    int8 convolutions natively with VNNI (AVX512-VNNI or AVX-VNNI). Without AMX (a 2-core AMD EPYC with
    AVX512-BF16 and VNNI) the quick-start ESeg-Lite-S in int8 ran 1.33x compiled bf16 at 1024x2048; with AMX (a
    2-core Intel Xeon), where oneDNN's bf16 convolutions run on AMX tiles too, int8 gained nothing over compiled
    bf16 (ESeg-Lite-S 0.98x, ESeg-S 0.92x) and is the less exact, so there the line says to prefer bf16."""
    vnni = bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())
    cpu = f"CPU: {support['capability']}" + (f" with {found}" if found else "") + (" + VNNI" if vnni else "")
    if support["amx_bf16"]:
        return (f"Warning: {cpu}: {doing} in int8, which on CPUs with AMX measured no faster than --compile --amp "
                "bf16 (AMX runs bf16 convolutions as fast as int8 ones) and is less exact; prefer --compile --amp "
                "bf16 here.")
    if not vnni:
        return (f"Warning: {cpu}: {doing} in int8 without VNNI, where oneDNN's int8 convolutions are not native "
                "(not measured by eseg; likely slower than --compile); not exact.")
    return f"{cpu}: {doing} in int8 (oneDNN's VNNI int8 convolutions); not exact."


def resolve_amp(amp: str | None, device: torch.device | str) -> str | None:
    """``amp`` with ``"auto"`` decided for ``device``: ``"bf16"`` where it runs natively (a CPU with AVX512-BF16
    or AMX, a CUDA GPU with bf16, XLA), else None (float32): emulated bf16 is slower than float32 on a CPU.
    Any other value is returned as it is. A run records the resolved value, so a resume keeps its precision."""
    if amp != "auto":
        return amp
    device = torch.device(device)
    if device.type == "cpu":
        native = cpu_bf16_support()["native"]
    elif device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = device.type == "xla"
    return "bf16" if native else None
