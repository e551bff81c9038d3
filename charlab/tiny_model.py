"""A tiny random Llama model with a locally trained byte-level BPE tokenizer, built offline in seconds.

It exists so that every stage (data generation, SFT, DPO, evaluation, Studio) can run end to end in tests
and on a laptop without a model hub: the weights are random (its text is gibberish), but shapes, the chat
template, assistant masks, padding and saving behave like a real chat model's.

`build_tiny_model(out_dir, seed)` is deterministic: the same seed gives byte-identical weights and
tokenizer files. The tokenizer is trained on `CORPUS` below (a few KB of varied English, code, digits
and punctuation); its byte-level alphabet means any text (unicode, emoji, code, newlines) round-trips.
Special tokens follow SmolLM2/ChatML: `<|endoftext|>` (0, pad), `<|im_start|>` (1, bos), `<|im_end|>` (2, eos).
"""

from __future__ import annotations

from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
VOCAB_SIZE = 2000

# ChatML. The assistant's content and its closing <|im_end|> sit inside {% generation %} so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` marks exactly what the model must learn to say.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MODEL_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}

CORPUS = """\
The morning fog rolled over the harbor while the fishermen checked their nets. Gulls circled overhead,
calling to one another, and the smell of salt and diesel hung in the air. By eight o'clock the sun had
burned through, and the water turned from grey to a deep, glittering blue.

"Do you think it will rain later?" she asked, pulling her coat tighter.
"Probably not," he said. "The wind is coming from the west, and the sky looks clear."
"Then let's walk to the lighthouse. It's only three miles, and I haven't been there since I was a child."

Science is a way of asking questions about the world and testing the answers carefully. A good experiment
changes one thing at a time, measures the result, and repeats the measurement to see how much it varies.
When the evidence disagrees with a theory, the theory must change, however beautiful it seemed.

Water boils at 100 degrees Celsius at sea level, but at the top of a high mountain it boils at a lower
temperature, because the air pressure is lower. That is why cooking pasta takes longer in the mountains.
Light travels at about 299,792 kilometers per second; sound is far slower, roughly 343 meters per second.

A recipe for simple bread: mix 500 g of flour, 10 g of salt, 7 g of yeast and 320 ml of warm water.
Knead for ten minutes until the dough is smooth. Let it rise for 1-2 hours, shape it, let it rise again,
then bake at 220 C for about 30 minutes. The loaf is done when it sounds hollow when tapped underneath.

I'm sorry, but I can't help with that request. However, I'd be happy to help you with something else!
Sure! Here's a short summary of the main points: first, the plan is clear; second, the budget is small;
third, we need more time. Would you like me to explain any of these in more detail?
Thank you for your question. That's a great point, and you're absolutely right to ask about it.
As an assistant, my goal is to be helpful, honest and kind. I try to give accurate, thoughtful answers.

The old library had tall windows, wooden shelves and a quiet reading room where students worked late
into the evening. History, philosophy, mathematics, poetry, economics, biology, chemistry and music each
had their own corner. The librarian knew every book by heart, or so everyone believed.

Questions people often ask: What is the meaning of life? How do I learn to code? Why is the sky blue?
Where should I travel next summer? When did the first humans reach the Americas? Who wrote Hamlet?
Which is heavier, a kilogram of feathers or a kilogram of iron? They weigh exactly the same, of course.

def fibonacci(n: int) -> list[int]:
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    values = [0, 1]
    while len(values) < n:
        values.append(values[-1] + values[-2])
    return values[:n]

for i in range(10):
    if i % 2 == 0:
        print(f"{i} is even")
    else:
        print(f"{i} is odd")

const total = items.reduce((sum, x) => sum + x.price * x.qty, 0);
SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name ORDER BY n DESC LIMIT 5;
{"name": "Ada", "age": 36, "skills": ["math", "poetry"], "active": true, "score": 9.75}

Numbers and symbols: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 99 100 256 1024 2048 65536 3.14159 2.71828 -7 +3
1st 2nd 3rd 4th 2024-05-17 12:30:45 $19.99 45% #1 @home a+b=c x*y/z (a) [b] {c} <d> a|b ~tilde ^caret
Punctuation: . , ; : ! ? ' " - -- _ / \\ ( ) [ ] { } < > = + * & % $ # @ ^ ~ ` | ... !? ?! ;) :)

The cat sat on the warm windowsill and watched the rain. Outside, people hurried past with umbrellas,
splashing through puddles. A dog barked somewhere down the street. The cat yawned, stretched, and went
back to sleep, entirely unconcerned with the busy world beyond the glass.

Good leaders listen more than they speak. They admit mistakes, give credit to others, and explain their
decisions. Trust is built slowly, through many small actions, and it can be lost in a single moment.
Courage, curiosity, patience, humility, warmth and humor are qualities that people admire in a friend.

She opened the letter slowly. "Dear Sam," it began, "I have wonderful news: we are moving back home in
the spring. The children can't wait to see you again, and neither can I. Write soon. With love, Maria."

The river starts high in the mountains as melting snow, flows through forests and farmland, passes under
old stone bridges and finally reaches the sea. Along the way it feeds wetlands, carries sediment, and
shapes the valleys it crosses. Rivers have always attracted towns, trade, mills, and later factories.

Yes. No. Maybe. Okay! Hello, world. Hi there! Good morning. Good night. See you tomorrow. Of course.
Let me think step by step. First, we add the numbers: 12 + 30 = 42. Then we divide by 6, giving 7.
Therefore the answer is 7. In other words, the average of the six values is seven.

Une phrase en francais, una frase en espanol, ein Satz auf Deutsch: cafe, naive, resume, uber, nino.

Astronomers photographed a distant galaxy whose spiral arms glowed with young, brilliant stars. Telescopes
orbiting above the atmosphere avoid the blurring caused by turbulent air. Planets, comets, asteroids,
nebulae and black holes: the universe is enormous, ancient and still expanding, mysterious in every direction.

Gardening advice: tomatoes prefer sunny, sheltered spots; lettuce tolerates shade; strawberries need
well-drained soil. Water deeply but rarely, mulch generously, and compost kitchen scraps. Harvest herbs
frequently so they keep producing fresh leaves. Beware of slugs, aphids, caterpillars and hungry rabbits.

The engineer sketched a bridge: steel cables, concrete towers, a graceful suspended deck. Calculations of
loads, vibrations, expansion and corrosion filled notebooks. Safety margins matter because failures are
catastrophic. Modern software simulates earthquakes, hurricanes, traffic jams and freezing temperatures.

Dialogue from a job interview. Interviewer: "Tell me about yourself." Candidate: "I studied economics,
worked two years in logistics, and I enjoy solving complicated scheduling problems." Interviewer: "Why
should we hire you?" Candidate: "Because I'm reliable, organized, adaptable, and genuinely enthusiastic."

Medieval castles featured moats, drawbridges, battlements, towers and courtyards. Knights trained with
swords, lances and shields; blacksmiths forged armor; farmers harvested wheat, barley and oats for bread
and beer. Kings, queens, bishops and merchants competed for power, wealth, land and influence.

Health tips: sleep seven to nine hours, drink plenty of water, exercise regularly, eat vegetables, fruit,
beans and whole grains, and visit a doctor when symptoms persist. Breathing slowly can reduce anxiety.
Friendship, laughter, sunlight and purposeful work contribute to happiness and longevity.

Weather report: cloudy skies this afternoon with scattered showers, becoming windy overnight. Tomorrow,
expect sunshine, temperatures between fourteen and twenty-two degrees, and gentle northerly breezes.
Thunderstorms, snowfall, hail, drizzle and humidity vary with seasons: winter, spring, summer, autumn.

Ocean creatures include whales, dolphins, octopuses, jellyfish, sharks, turtles, seahorses and coral.
Penguins waddle, eagles soar, elephants trumpet, monkeys chatter, wolves howl, bees buzz, frogs croak.
Forests shelter owls, foxes, deer, squirrels, badgers, hedgehogs, mushrooms, ferns and mosses.

Philosophers debate knowledge, justice, freedom, consciousness and virtue. Socrates questioned everything;
Aristotle classified nature; Confucius emphasized harmony; Kant examined reason; Nietzsche challenged
morality. Ethics asks how we ought to live; logic studies valid arguments; aesthetics explores beauty.

Traveling by train through the countryside, passengers admired vineyards, villages, churches, windmills,
meadows and quiet lakes. The conductor announced each station politely. Tickets, luggage, timetables,
platforms, delays and connections: journeys require patience, flexibility and occasionally a good novel.
"""


def _train_tokenizer():  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Lines (not one blob) so the trainer sees a natural word-frequency distribution; repeated passes
    # over the corpus are pointless (BPE counts frequencies), so it is fed once.
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    return tok


def build_tiny_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """The tiny model's tokenizer (deterministic), as a `PreTrainedTokenizerFast` with the ChatML template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny random Llama model and its tokenizer into `out_dir` (created); return `out_dir`.

    Deterministic in `seed`: building twice gives identical files. Takes about a second on 2 CPU cores.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **MODEL_SHAPE,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=ids[IM_START],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        use_cache=True,
    )
    # A private generator state: seed, build, restore, so callers' RNG streams are not disturbed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
