"""Script mixing: words of the minority script, with notation (LaTeX, math, variables) and
other scripts (Greek letters in maths) left out."""

from __future__ import annotations

from serving.generate.reasoning.language import script_mix


def test_one_script_is_not_mixed():
    english = script_mix("There are three apples on the table, so the answer is 3.")
    assert english.dominant == "latin" and not english.mixed and english.cjk_chars == 0
    chinese = script_mix("图中有三个苹果，所以答案是三。")
    assert chinese.dominant == "cjk" and not chinese.mixed and chinese.latin_words == 0


def test_chinese_inside_an_english_answer_is_mixed():
    mix = script_mix("The triangle has angles of 30 and 60 degrees, 所以第三个角是九十度, "
                     "which makes it a right triangle.")
    assert mix.dominant == "latin" and mix.mixed and mix.cjk_chars == 10
    assert 0.2 < mix.minority_fraction < 0.5


def test_english_inside_a_chinese_answer_is_mixed():
    mix = script_mix("这个图形是一个三角形，它的面积是底乘以高除以二。 So the area is twelve.")
    assert mix.dominant == "cjk" and mix.mixed and mix.latin_words == 5


def test_notation_is_not_language():
    mix = script_mix("面积是 $\\frac{ab}{2}$，答案是 \\boxed{\\sqrt{x}} 以及 \\(\\alpha + beta\\)。"
                     " x = 3, y = 4, α β")
    assert mix.latin_words == 0 and not mix.mixed


def test_a_lone_name_is_not_mixing():
    mix = script_mix("这是 Python 写的程序，它计算了三角形的面积和周长，结果是十二。")
    assert mix.latin_words == 1 and not mix.mixed


def test_empty_and_symbol_only_text():
    assert script_mix("").dominant == "none"
    assert not script_mix("= 42 + 7 ---").mixed
