# SPDX-License-Identifier: Apache-2.0
"""The demo checkpoints' tokenizers: byte-level BPE trained on a fixed built-in corpus.

Two token sets, one per chat format: the Qwen family's ChatML specials and LLaVA's Llama-style
specials. The special tokens come first, so their ids are fixed (Qwen ``<|endoftext|>`` 0,
``<|im_start|>`` 1, ``<|im_end|>`` 2 (eos), ``<|vision_start|>`` 3, ``<|vision_end|>`` 4,
``<|vision_pad|>`` 5, ``<|image_pad|>`` 6, ``<|video_pad|>`` 7; LLaVA ``<unk>`` 0, ``<s>`` 1,
``</s>`` 2 (eos), ``<pad>`` 3, ``<image>`` 4). Training is deterministic: the same corpus gives
the same ``tokenizer.json`` bytes on every run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["LLAVA_TOKENS", "QWEN_TOKENS", "TokenSet", "build_tokenizer"]

# Fixed training corpus: English sentences of the kind the demo prompts use (questions about an
# image), so a question tokenizes into several ordinary tokens rather than bytes. Never edit it
# without bumping BUILDER_VERSION: the tokenizer (and so every checkpoint) depends on it.
CORPUS_SENTENCES = (
    "What is in this image?",
    "What is shown in the picture?",
    "Describe the image in detail.",
    "Describe this video in one sentence.",
    "What happens in the video?",
    "How many people are in the photo?",
    "How many cars are parked on the street?",
    "What color is the car on the left?",
    "What color is the sky in this picture?",
    "Is there a dog in the image?",
    "Is the cat sitting on the table or under the chair?",
    "Where is the red ball?",
    "Which animal is the largest?",
    "What is the man holding in his hand?",
    "What is the woman wearing?",
    "What time of day is it?",
    "What is written on the sign?",
    "Read the text on the board.",
    "Count the apples on the plate.",
    "Is it raining outside?",
    "What is the weather like?",
    "Answer the question using a single word or phrase.",
    "Answer with yes or no.",
    "Please look at the picture and answer the question.",
    "The image shows a small house next to a large tree.",
    "A black dog is running across the green grass.",
    "Two children are playing with a yellow ball in the park.",
    "A red car is parked in front of a white building.",
    "The sky is blue and there are a few white clouds.",
    "A cat is sleeping on a brown sofa near the window.",
    "There are three apples and two oranges on the table.",
    "A woman in a blue dress is reading a book.",
    "A man is riding a bicycle down the road.",
    "The street is busy with people, cars and buses.",
    "A plate of food with rice, vegetables and chicken.",
    "The mountains are covered with snow in the winter.",
    "A boat is sailing on the calm water of the lake.",
    "The train is arriving at the station in the morning.",
    "A bird is sitting on the branch of an old tree.",
    "The kitchen has a white table and four wooden chairs.",
    "A group of friends is sitting around a fire at night.",
    "The sign says stop in large white letters.",
    "The chart shows that sales increased in the second year.",
    "The document contains a table with numbers and names.",
    "The person on the right is smiling and waving.",
    "The video shows a person walking into the room and opening the door.",
    "First the ball falls, then it bounces twice and rolls away.",
    "In the first frame the light is green, later it turns red.",
    "The camera moves slowly from left to right across the field.",
    "You are a helpful assistant.",
    "I can see a picture of a city at sunset.",
    "The answer is yes.",
    "The answer is no.",
    "There is one dog, two cats and three birds.",
    "The top left corner of the image is dark.",
    "The bottom right part of the picture is bright.",
    "The object in the center is a round table.",
    "The flowers in the garden are red, yellow and purple.",
    "A phone, a laptop and a cup of coffee are on the desk.",
    "The number on the shirt is seven.",
    "Thank you for the question, here is a short answer.",
)
CORPUS_WORDS = (
    "a about above across after again against all also an and animal answer any are around as at "
    "away back ball be because before behind below beside between big bird black blue board boat "
    "book both bottom box boy brown building bus but by can car cat center chair chart child "
    "children city clear close clouds coffee color count cup dark day describe desk detail did "
    "different do document does dog door down dress during each eight eleven empty evening every "
    "face far field fire first five flower food for four frame friend from front fruit full game "
    "garden girl give glass good grass green ground group hair hand happy has have he head her "
    "here high him his hold holding horse house how image in inside is it its kind kitchen lake "
    "large last left letter light like little long look low man many middle more morning most "
    "mountain move much near next night nine no not now number object of off old on one only "
    "open or orange other out outside over paper park part people person phone photo picture "
    "place plate play purple question rain read red right river road room round run same scene "
    "second see seven shirt short show sign sitting six sky small snow some square stand station "
    "still stop street sun table tall ten text than that the their them then there these they "
    "thing this three through time to today top train tree two under up video view wall water "
    "we wearing weather what when where which white who why window with woman word write year "
    "yellow yes you young zero"
)


# Target size of the trained BPE vocabulary (special tokens included). The corpus is small, so
# training may stop earlier; a config's vocab_size is always exactly len(tokenizer), so no
# sampled id ever falls outside the tokenizer.
VOCAB_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class TokenSet:
    """The special tokens of one chat format and the roles some of them play."""

    special_tokens: tuple[str, ...]
    eos: str
    pad: str
    bos: str | None
    unk: str | None
    model_max_length: int
    #: The token whose id the model configs give as ``bos_token_id`` (Qwen has no tokenizer bos).
    config_bos: str


QWEN_TOKENS = TokenSet(
    special_tokens=(
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    eos="<|im_end|>",
    pad="<|endoftext|>",
    bos=None,
    unk=None,
    model_max_length=32768,
    config_bos="<|endoftext|>",
)
LLAVA_TOKENS = TokenSet(
    special_tokens=("<unk>", "<s>", "</s>", "<pad>", "<image>"),
    eos="</s>",
    pad="<pad>",
    bos="<s>",
    unk="<unk>",
    model_max_length=4096,
    config_bos="<s>",
)


def _corpus() -> list[str]:
    # Repeat the sentences so their merges outrank the word list's; fixed order, fixed counts.
    return [*(CORPUS_SENTENCES * 4), *CORPUS_WORDS.split()]


def _train(special_tokens: tuple[str, ...]) -> Any:
    """Byte-level BPE trained on the built-in corpus; special tokens get ids 0..len-1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def build_tokenizer(tokens: TokenSet) -> Any:
    """A transformers fast tokenizer around a freshly trained ``tokenizers`` model."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_train(tokens.special_tokens),
        eos_token=tokens.eos,
        pad_token=tokens.pad,
        unk_token=tokens.unk,
        bos_token=tokens.bos,
        model_max_length=tokens.model_max_length,
        extra_special_tokens={},
    )
