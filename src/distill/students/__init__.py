"""Students: a pre-trained compact model with a fresh head, or layers inherited from the teacher."""

from distill.students.inherit import check_layers, student_from_teacher

__all__ = ["student_from_teacher", "check_layers"]
