"""`python -m protege.teacher.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server`, the same arguments), with llama.cpp's weight repacking turned
off on CPUs with AMX.

llama.cpp's AMX backend repacks the weights and then crashes on the first answer on Intel
Sapphire Rapids (ggml-org/llama.cpp#20824, "segfault in ggml_backend_amx_mul_mat"; here: SmolLM2
Q4_1 under llama-cpp-python 0.3.36 on a Xeon with AMX_INT8, SIGSEGV on the first chat
completion, and a clean answer with repacking off). llama.cpp's own server turns repacking off
with `--no-repack`; llama-cpp-python's server has no such flag, so this sets the same model
parameter (`use_extra_bufts`) before the server loads the model. On CPUs without AMX nothing
changes: repacking (for Q4_0, Q4_K, Q8_0 and IQ4_NL weights) stays on.
"""

from __future__ import annotations


def amx_cpu() -> bool:
    """Whether llama.cpp's CPU backend was built for, and runs on, a CPU with AMX."""
    import llama_cpp.llama_cpp as lib

    return b"AMX_INT8 = 1" in lib.llama_print_system_info()


def no_repacking_on_amx() -> bool:
    """Load every model without extra buffer types when the CPU has AMX; whether it did."""
    import llama_cpp.llama_cpp as lib

    if not amx_cpu():
        return False
    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False  # what llama-server's --no-repack sets
        return p

    lib.llama_model_default_params = params
    return True


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    no_repacking_on_amx()
    serve()


if __name__ == "__main__":
    main()
