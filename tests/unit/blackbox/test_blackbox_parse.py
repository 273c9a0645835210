"""Answers to labels: robust where the meaning is clear, unparseable (never guessed) where it is not."""

from __future__ import annotations

import math

import pytest

from distill.teachers.blackbox import LabelParser, PromptTemplate, TokenChoice

LABELS = ["positive", "negative", "very positive", "sci_tech"]


@pytest.fixture(scope="module")
def parser():
    return LabelParser(LABELS, {"negative": ["bad", "neg"]})


@pytest.mark.parametrize("answer, label", [
    ("positive", "positive"),
    ("  **NEGATIVE**", "negative"),
    ("Positive.", "positive"),
    ('"negative"', "negative"),
    ('{"label": "negative"}', "negative"),
    ("The answer is: positive", "positive"),
    ("I would say this review is positive overall.", "positive"),
    ("Very positive!", "very positive"),  # the longer label wins over the one inside it
    ("bad", "negative"),  # synonym
    ("Sci-Tech", "sci_tech"),  # hyphen / underscore / case
    ("It is not negative, it's positive", "positive"),  # negated mention skipped
    ("Sentiment: Positive (not negative)", "positive"),
    ("Negative. Some positive moments, though.", "negative"),  # first label mentioned
    ("Mixed signals: positive words, then negative ones. Answer: negative", "negative"),  # explicit marker
    ("ＰＯＳＩＴＩＶＥ", "positive"),  # full-width letters
])
def test_clear_answers_parse(parser, answer, label):
    result = parser.parse(answer)
    assert result.ok and LABELS[result.label] == label, result


@pytest.mark.parametrize("answer, reason", [
    ("", "empty answer"),
    ("...", "empty answer"),
    ("banana", "no label named"),
    ("positively thrilling", "no label named"),  # a label only as a whole word
    ("positive or negative", "ambiguous"),
    ("positive/negative", "ambiguous"),
    ("Positive, negative", "ambiguous"),
    ("isn't positive", "only negated"),
    ("neither positive nor negative", "only negated"),
])
def test_unclear_answers_are_unparseable(parser, answer, reason):
    result = parser.parse(answer)
    assert result.label is None and result.reason.startswith(reason), result


def test_synonyms_are_checked():
    with pytest.raises(ValueError, match="not a label"):
        LabelParser(["a", "b"], {"c": ["x"]})
    with pytest.raises(ValueError, match="also names the label 'a'"):
        LabelParser(["a", "b"], {"b": ["A"]})


def tok(token, logprob, *top):
    return TokenChoice(token, logprob, tuple(top))


def test_soft_labels_renormalise_over_label_tokens(parser):
    tokens = [tok("\n", -0.01),
              tok("Pos", -0.2, ("Pos", -0.2), (" Negative", -1.8), ("neg", -2.5), ("The", -3.0)),
              tok("itive", -0.01)]
    probs = parser.soft_labels(tokens, label=0)
    pos, neg = math.exp(-0.2), math.exp(-1.8) + math.exp(-2.5)
    assert probs == pytest.approx([pos / (pos + neg), neg / (pos + neg), 0.0, 0.0])
    assert parser.token_label("very") == 2 and parser.token_label(" NEG") == 1
    two = LabelParser(["positive", "politics"])
    assert two.token_label("po") is None and two.token_label("pos") == 0  # "po" starts both labels


def test_soft_labels_only_when_the_answer_opens_with_the_label(parser):
    opener = [tok("The", -0.1, ("The", -0.1), ("Positive", -2.0))]
    assert parser.soft_labels(opener, label=0) is None  # the alternatives of "The" say nothing
    assert parser.soft_labels([tok("Negative", -0.1)], label=0) is None  # disagrees with the parsed label
    assert parser.soft_labels(None, label=0) is None


def test_prompt_renders_messages_and_rejects_bad_templates():
    t = PromptTemplate("Labels: {labels}. {{json}} Text: {text}", system="You label {labels}.")
    assert t.render("a {weird} text", ["pos", "neg"]) == [
        {"role": "system", "content": "You label pos, neg."},
        {"role": "user", "content": "Labels: pos, neg. {json} Text: a {weird} text"},
    ]
    assert t.fingerprint != PromptTemplate().fingerprint
    for bad, match in [("no input", "needs a {text}"), ("{text} {text.__class__}", "unknown placeholder"),
                       ("{text} {", "brace")]:
        with pytest.raises(ValueError, match=match):
            PromptTemplate(bad)
