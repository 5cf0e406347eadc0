"""The kernels' own source text for lab 06: a named function or struct, found by name and balanced braces."""

import pytest

from approxdrop.course.source import kernel_source
from approxdrop.ops.cuda import SOURCE_DIR


def test_a_named_function_is_its_doc_comment_and_whole_body():
    text = kernel_source("pattern_index.h", "kept_index")
    assert text.startswith("/// The j-th kept index")
    assert "I kept_index(const BasicPattern<I>& p, NoDeduce<I> j) {" in text
    assert text.rstrip().endswith("}") and text.count("{") == text.count("}")
    assert "kept_count" not in text and "kept_residue(const" not in text  # neither the next nor the previous one


def test_a_struct_ends_with_its_semicolon_and_a_nested_constructor_is_not_a_second_match():
    assert kernel_source("pattern_index.h", "BasicPattern").endswith("I dp, offset, keep;\n};")
    block = kernel_source("pattern_gemm.cu", "Block")
    assert block.count("struct Block {") == 1 and block.endswith("};") and "__device__ explicit Block(" in block


def test_braces_in_comments_and_literals_and_preprocessor_lines_do_not_count(tmp_path):
    (tmp_path / "k.cu").write_text(
        "#include <x.h>\n"
        "#define OPEN {\n"
        "// helper } with a brace in a comment\n"
        "template <typename T>\n"
        '__device__ int helper(const char* s = "}{") {  /* } */\n'
        "  return s[0] == '}' ? other(1) : 2;\n"
        "}\n"
        "int other(int x) { return helper(nullptr) + x; }\n"
    )
    helper = kernel_source("k.cu", "helper", source_dir=tmp_path)
    assert helper.startswith("// helper } with a brace in a comment\ntemplate <typename T>\n__device__ int helper(")
    assert helper.endswith("return s[0] == '}' ? other(1) : 2;\n}")
    assert kernel_source("k.cu", "other", source_dir=tmp_path) == "int other(int x) { return helper(nullptr) + x; }"


@pytest.mark.parametrize(
    ("file", "name", "message"),
    [
        ("pattern_index.h", "no_such_function", "no function or struct named 'no_such_function'"),
        ("pattern_gemm.h", "launch_pattern_gemm", "no function or struct named 'launch_pattern_gemm'"),  # declared only
        ("pattern_index.h", "kept", "no function or struct named 'kept'"),  # a prefix of kept_index, kept_count
        ("no_such_file.cu", "kept_index", "no kernel source 'no_such_file.cu'"),
    ],
)
def test_an_unknown_name_or_file_is_a_clear_error(file, name, message):
    with pytest.raises(ValueError, match=message) as error:
        kernel_source(file, name)
    assert str(SOURCE_DIR) in str(error.value)
