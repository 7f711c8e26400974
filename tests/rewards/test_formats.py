"""The test formats' pure parts, by hand: reading rows, refusing what cannot be judged, comparing output."""

import json

import pytest

from stare_lit.errors import ConfigError
from stare_lit.rewards import CallTests, CodeTestReward, HumanEvalTests, MBPPTests, StdioTests
from stare_lit.rewards.formats import same_output
from stare_lit.sandbox import UnjudgeableTest


def test_same_output_ignores_trailing_whitespace_and_compares_numbers_within_tolerance():
    assert same_output("3 \n\n", "3")
    assert not same_output("3\n4", "3")
    assert not same_output("0.3333333", "0.333333333")  # text only without a tolerance
    assert same_output("0.3333333 1", "0.333333333 1", tolerance=1e-6)
    assert not same_output("0.33 1", "0.333333333 1", tolerance=1e-6)
    assert same_output("1000000.5", "1000000.0", tolerance=1e-6)  # relative: 0.5 / 1e6 ≤ 1e-6
    assert not same_output("YES 1", "NO 1", tolerance=0.5)  # words are compared as text
    assert same_output("nan", "nan ", tolerance=1e-6)  # equal as text, though nan != nan as numbers


def test_stdio_reads_pairs_and_the_inputs_outputs_layout_and_refuses_function_rows():
    stdio = StdioTests()
    pairs = [{"input": "1\n", "output": "2\n"}]
    assert stdio.cases({"tests": pairs}) == [("1\n", "2\n")]
    layout = {"inputs": ["1\n", "2\n"], "outputs": ["2\n", "3\n"]}
    assert stdio.cases({"tests": layout}) == stdio.cases({"tests": json.dumps(layout)}) == [("1\n", "2\n"), ("2\n", "3\n")]
    assert stdio.cases({"tests": []}) is None
    for row, why in [({"fn_name": "f", "inputs": [[1]], "outputs": [1]}, "use stare_lit.rewards.CallTests"),
                     ({"inputs": ["1"], "outputs": []}, "of equal lengths"), ("{not json", "not JSON"),
                     ([{"input": 1, "output": "1"}], "a test must be {'input': str, 'output': str}")]:
        with pytest.raises(UnjudgeableTest, match="StdioTests: ") as refused:
            stdio.cases({"tests": row})
        assert why in str(refused.value) and "\n" not in str(refused.value)


def test_call_reads_argument_lists_and_livecodebench_text():
    call = CallTests()
    row = {"tests": {"fn_name": "f", "inputs": [[1, [2, 3]], ["a", {"k": 1}]], "outputs": [[1, 2], None]}}
    assert call.cases(row) == ("f", [([1, [2, 3]], [1, 2]), (["a", {"k": 1}], None)])
    lcb = {"tests": json.dumps({"fn_name": "g", "inputs": ["[1, 2]\n3"], "outputs": ["[4, 5]"]})}
    assert call.cases(lcb) == ("g", [([[1, 2], 3], [4, 5])])
    assert call.cases({"tests": {"inputs": [[2]], "outputs": [4]}, "fn_name": "h"}) == ("h", [([2], 4)])
    for tests, why in [({"inputs": [[1]], "outputs": [1]}, "names no function"),
                       ({"fn_name": "f", "inputs": [5], "outputs": [5]}, "neither a list of arguments"),
                       ({"fn_name": "f", "inputs": ["[1"], "outputs": ["1"]}, "is not JSON"),
                       ({"fn_name": "os.system", "inputs": [[1]], "outputs": [1]}, "names no function"),
                       ([1, 2], "are not {'fn_name'")]:
        with pytest.raises(UnjudgeableTest, match="CallTests: ") as refused:
            call.cases({"tests": tests})
        assert why in str(refused.value)


def test_humaneval_binds_only_the_entry_point_to_the_program():
    he = HumanEvalTests()
    row = {"prompt": "def helper(x):\n    return x\n\ndef f(x):\n    \"\"\"doc\"\"\"\n",
           "test": "def check(candidate):\n    assert candidate(1) == helper(1)\n", "entry_point": "f"}
    setup, proxies, tests = he.cases(row)
    assert setup == row["prompt"] and proxies == ("f",) and tests == (row["test"] + "\n\ncheck(f)\n",)
    assert he.program("    return x\n", row) == row["prompt"] + "    return x\n"
    for bad, why in [({"entry_point": "f()"}, "is not a function name"), ({"test": "assert f(1)"}, "defines no"),
                     ({"prompt": "Complete: def f(x"}, "prompt is not valid Python"), ({"test": ["x"]}, "not text")]:
        with pytest.raises(UnjudgeableTest, match="HumanEvalTests: .*" + why):
            he.cases({**row, **bad})
    assert he.cases({**row, "test": ""}) is None


def test_mbpp_proxies_are_the_names_the_asserts_use_that_the_setup_does_not_define():
    mbpp = MBPPTests()
    row = {"test_list": ["assert math.isclose(area(R), 3.14159, rel_tol=1e-3)", "assert [sq(i) for i in range(3)] == [0, 1, 4]"],
           "test_setup_code": "R = 1.0", "test_imports": ["import math"]}
    setup, proxies, tests = mbpp.cases(row)
    assert proxies == ("area", "sq") and setup == "import math\nR = 1.0" and tests == tuple(row["test_list"])
    assert mbpp.program("def sq(x): return x * x", row) == "import math\ndef sq(x): return x * x"
    assert mbpp.cases({"test_list": ["assert f(1) == 1"]}) == ("\n", ("f",), ("assert f(1) == 1",))
    with pytest.raises(UnjudgeableTest, match=r"MBPPTests: test 1 .* uses no function of the program"):
        mbpp.cases({**row, "test_list": ["assert math.pi > R"]})
    with pytest.raises(UnjudgeableTest, match=r"MBPPTests: the row's test 1 .* is not valid Python"):
        mbpp.cases({**row, "test_list": ["assert area(1) == = 2"]})
    assert mbpp.cases({**row, "test_list": []}) is None


def test_a_nonsense_setting_is_one_config_error_naming_the_key():
    for make, key in [(lambda: StdioTests(tolerance=-1), "StdioTests) init_args.tolerance=-1"),
                      (lambda: StdioTests(tolerance=float("nan")), "init_args.tolerance=nan"),
                      (lambda: CallTests(column=""), "CallTests) init_args.column=''"),
                      (lambda: HumanEvalTests(entry_point_column=" "), "init_args.entry_point_column"),
                      (lambda: MBPPTests(test_column=""), "MBPPTests) init_args.test_column"),
                      (lambda: CodeTestReward(tests="humaneval"), "CodeTestReward init_args.tests='humaneval'")]:
        with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
            make()


def test_a_missing_column_is_one_config_error():
    reward = CodeTestReward(tests=HumanEvalTests())
    with pytest.raises(ConfigError, match="reads the column 'entry_point', which is not a dataset column"):
        reward(["p"], ["x"], test=["t"])
