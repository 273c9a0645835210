from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distill.config import RecipeError
from distill.students import student_from_teacher


def test_layers_and_head_are_copied(tiny_classifier):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    student = student_from_teacher(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["bert.encoder.layer.0.attention.self.query.weight"],
                       t["bert.encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(s["bert.encoder.layer.1.output.dense.weight"],
                       t["bert.encoder.layer.3.output.dense.weight"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"],
                       t["bert.embeddings.word_embeddings.weight"])


def test_all_layers_reproduce_the_teacher(tiny_classifier):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    student = student_from_teacher(teacher, [0, 1, 2, 3]).eval()
    ids = torch.randint(5, 30, (2, 7))
    torch.testing.assert_close(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_out_of_range(tiny_classifier):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    with pytest.raises(RecipeError, match=r"student.layers: \[7\] out of range; the teacher has 4 layers"):
        student_from_teacher(teacher, [0, 7])
