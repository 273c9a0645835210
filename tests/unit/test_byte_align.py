"""The byte-offset aligner of two tokenizations: worked examples (split multi-byte characters, a BOS on one
side, trimmed leading spaces) and a property test over random text with spaces, emoji, CJK and
leading/trailing whitespace, tokenised by two different tokenizers trained here."""

from __future__ import annotations

import random

import pytest

from distill.data.byte_align import align_spans, align_texts, byte_spans


def test_byte_spans_of_multibyte_characters():
    text = "añ🙂b"
    # characters: a (1 byte), ñ (2), 🙂 (4), b (1)
    assert byte_spans(text, [(0, 1), (1, 2), (2, 3), (3, 4)]) == [(0, 1), (1, 3), (3, 7), (7, 8)]
    assert byte_spans(text, [(0, 0), (1, 3)]) == [(0, 0), (1, 7)]


def test_worked_example_with_split_character_and_bos():
    # side A: BOS, "the", " caf", "é" split over two byte-level tokens (both carry the character's span), "!"
    a = [(0, 0), (0, 3), (3, 7), (7, 9), (7, 9), (9, 10)]
    # side B: trims the space before "café" and keeps "café!" as two tokens
    b = [(0, 3), (4, 9), (9, 10)]
    al = align_spans(a, b)
    assert al.groups == [([1], [0]), ([2, 3, 4], [1]), ([5], [2])]
    assert al.ends == [3, 9, 10]
    assert al.unaligned_a == [0] and al.unaligned_b == []  # the BOS covers no bytes: in no group
    assert al.chunk_ids(6, 3) == ([-1, 0, 1, 1, 1, 2], [0, 1, 2])


def test_trailing_text_only_one_side_covers_is_unaligned():
    a = [(0, 3), (3, 4)]  # "abc" + a trailing space
    b = [(0, 3)]          # the other tokenizer dropped it
    al = align_spans(a, b)
    assert al.groups == [([0], [0])] and al.unaligned_a == [1] and al.unaligned_b == []


def _train_tokenizers(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["the quick brown fox jumps over the lazy dog", "café crème brûlée", "日本語のテキスト",
              "emoji 🙂🚀 and more 👍🏽", "  leading and trailing spaces  ", "naïve coöperation",
              "Ünïcödé wörds ïn ä sëntence"] * 20
    # A: byte-level BPE with a BOS added in front (like Llama 3)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok_a = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>")
    # B: a unigram model over whitespace-split words, no BOS
    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    uni.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=500, special_tokens=["<unk>"],
                                                            unk_token="<unk>"))
    tok_b = PreTrainedTokenizerFast(tokenizer_object=uni, unk_token="<unk>")
    return tok_a, tok_b


PIECES = ["the", "fox", " ", "  ", "café", "🙂", "🚀", "👍🏽", "日本", "語", "テキスト", "brûlée", "x", "!",
          ",", "naïve", "\t", "Zq"]


@pytest.mark.parametrize("seed", range(3))
def test_alignment_properties_on_random_text(tmp_path, seed):
    tok_a, tok_b = _train_tokenizers(tmp_path)
    rng = random.Random(seed)
    for _ in range(60):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 14)))
        ids_a, ids_b, al = align_texts(text, tok_a, tok_b)
        enc_a = tok_a(text, return_offsets_mapping=True)
        enc_b = tok_b(text, return_offsets_mapping=True)
        span_a = byte_spans(text, enc_a["offset_mapping"])
        span_b = byte_spans(text, enc_b["offset_mapping"])
        assert ids_a[0] == tok_a.bos_token_id and 0 in al.unaligned_a  # the BOS, on side A only
        # the groups and the unaligned tokens partition each side, in order
        flat_a = [i for ga, _ in al.groups for i in ga]
        flat_b = [j for _, gb in al.groups for j in gb]
        assert sorted(flat_a + al.unaligned_a) == list(range(len(ids_a)))
        assert sorted(flat_b + al.unaligned_b) == list(range(len(ids_b)))
        assert flat_a == sorted(flat_a) and flat_b == sorted(flat_b)
        assert len(al.groups) <= min(len(ids_a), len(ids_b))
        prev = 0
        for (ga, gb), end in zip(al.groups, al.ends, strict=True):
            assert ga and gb, "a group has tokens on both sides"
            for spans, group in ((span_a, ga), (span_b, gb)):
                # every token lies inside the group's bytes, and the group ends at the same byte on both sides
                assert all(prev <= spans[k][0] and spans[k][1] <= end for k in group)
                assert max(spans[k][1] for k in group) == end
            prev = end
        # the bytes the groups cover are the text up to the last common end: nothing in between is lost
        raw = text.encode("utf-8")
        covered = max(al.ends, default=0)
        for spans, unaligned in ((span_a, al.unaligned_a), (span_b, al.unaligned_b)):
            # left out: tokens covering no bytes, and tokens past the last byte both sides reach
            assert all(spans[k][1] <= spans[k][0] or spans[k][1] > covered for k in unaligned)
        if max(e for _, e in span_a) == max(e for _, e in span_b):
            assert covered == max(e for _, e in span_a)  # both reach the same last byte: all of it aligned
        for end in al.ends:
            raw[:end].decode("utf-8")  # a group boundary never cuts a character (raises if it does)
