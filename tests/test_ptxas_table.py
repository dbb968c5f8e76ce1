"""benchmarks/ptxas_table.py reads ptxas -v output (the nvcc run itself is the script's)."""


def test_ptxas_table_parses_ptxas_output():
    from benchmarks.ptxas_table import parse, short_name

    output = """ptxas info    : Compiling entry function '_ZN8fastdnas3fooIfEEvPf' for 'sm_90'
ptxas info    : Function properties for _ZN8fastdnas3fooIfEEvPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 768 bytes smem, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN8fastdnas3barIdEEvPd' for 'sm_90'
ptxas info    : Used 18 registers, 360 bytes cmem[0]
"""
    assert parse(output) == [
        {"name": "_ZN8fastdnas3fooIfEEvPf", "stores": 4, "loads": 12, "smem": 768, "registers": 40},
        {"name": "_ZN8fastdnas3barIdEEvPd", "stores": 0, "loads": 0, "smem": 0, "registers": 18},
    ]
    assert short_name("void fastdnas::(anonymous namespace)::k<c10::Half, float>(fastdnas::(anonymous "
                      "namespace)::T<float const*>, int)") == "k<Half, float>"
