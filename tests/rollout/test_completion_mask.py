"""completion_mask: which generated tokens belong to the completion, and which rows were cut off."""

import torch

from stare_lit.rollout.base import completion_mask

EOS, PAD = 2, 0


def test_eos_included_and_everything_after_excluded():
    ids = torch.tensor([
        [5, 6, EOS, 7, 8],  # EOS at 2: tokens 0..2 kept, 7 and 8 after it dropped
        [EOS, 5, 6, 7, 8],  # EOS first: only the EOS itself
        [5, EOS, EOS, EOS, EOS],  # generate's EOS padding: only the first one counts
        [5, EOS, PAD, PAD, PAD],  # EOS then pad
    ])
    mask, truncated = completion_mask(ids, EOS, PAD)
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, False, False, False, False],
        [True, True, False, False, False],
        [True, True, False, False, False],
    ]
    assert truncated.tolist() == [False, False, False, False]
    assert mask.dtype == torch.bool


def test_pad_after_stop_string_excluded_and_not_truncated():
    # a stop string ends the completion without EOS; generate then writes pad
    ids = torch.tensor([[5, 6, 7, PAD, PAD], [5, PAD, PAD, PAD, PAD]])
    mask, truncated = completion_mask(ids, EOS, PAD)
    assert mask.tolist() == [[True, True, True, False, False], [True, False, False, False, False]]
    assert truncated.tolist() == [False, False]


def test_no_eos_is_truncated_and_all_kept():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, EOS, 8, 9]])
    mask, truncated = completion_mask(ids, EOS, PAD)
    assert mask.tolist() == [[True] * 5, [True, True, True, False, False]]
    assert truncated.tolist() == [True, False]
    # EOS as the very last token: complete, not truncated
    mask, truncated = completion_mask(torch.tensor([[5, 6, 7, 8, EOS]]), EOS, PAD)
    assert mask.tolist() == [[True] * 5] and truncated.tolist() == [False]


def test_pad_equal_to_eos():
    # tokenizers without a pad token reuse EOS: the first one is the EOS (kept), the rest are padding
    ids = torch.tensor([[5, 6, EOS, EOS, EOS], [5, 6, 7, 8, 9], [EOS, EOS, EOS, EOS, EOS]])
    mask, truncated = completion_mask(ids, EOS, EOS)
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True] * 5,
        [True, False, False, False, False],
    ]
    assert truncated.tolist() == [False, True, False]


def test_several_eos_ids_and_no_pad():
    # eos_id as a list (e.g. <|im_end|> and <|endoftext|>): the first of either ends the completion
    ids = torch.tensor([[5, 3, 2, 7], [5, 6, 2, 3], [0, 0, 0, 0]])
    mask, truncated = completion_mask(ids, [2, 3])
    # without pad_id, token 0 is an ordinary token
    assert mask.tolist() == [[True, True, False, False], [True, True, True, False], [True] * 4]
    assert truncated.tolist() == [False, False, True]
