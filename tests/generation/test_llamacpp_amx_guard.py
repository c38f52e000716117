"""ggml's AMX weight buffers stay off on a CPU that advertises AMX (they killed the process with
SIGILL on an AMX Xeon VM), unless asked for; elsewhere llama.cpp's defaults stand."""

from __future__ import annotations

from layered.generation.llamacpp_batch import AMX_ENV, cpu_has_amx, model_params

AMX_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"
EPYC_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    (tmp_path / "amx").write_text(AMX_FLAGS)
    (tmp_path / "epyc").write_text(EPYC_FLAGS)
    (tmp_path / "name").write_text("model name\t: amx_int8 in a name, not a flag\n")
    assert cpu_has_amx(tmp_path / "amx")
    assert not cpu_has_amx(tmp_path / "epyc")
    assert not cpu_has_amx(tmp_path / "name")
    assert not cpu_has_amx(tmp_path / "missing")  # unreadable (not Linux): no AMX assumed


def test_extra_buffers_are_off_exactly_on_amx_cpus_unless_asked_for(monkeypatch):
    monkeypatch.delenv(AMX_ENV, raising=False)
    assert model_params().use_extra_bufts is (not cpu_has_amx())
    assert model_params(extra_buffers=True).use_extra_bufts is True
    assert model_params(extra_buffers=False).use_extra_bufts is False
    monkeypatch.setenv(AMX_ENV, "1")
    assert model_params().use_extra_bufts is True
