"""Word pools for template prompt synthesis: who asks, about what situation, wanting what, under which limits.

Situations and requests are grouped by topic so that a synthesized prompt stays coherent ("my sourdough
collapsed" goes with baking requests, not with tax questions). Persona cues are the optional hints that a
share (`data.hint_rate`) of template prompts carries; `{name}` is the persona's display name.
"""

from __future__ import annotations

AUDIENCES = [
    "a high-school student",
    "a retired teacher",
    "a first-time manager",
    "a nurse working night shifts",
    "a freelance graphic designer",
    "a parent of two toddlers",
    "a software engineer",
    "a small-business owner",
    "a graduate student",
    "someone who just moved abroad",
    "a volunteer firefighter",
    "a beginner cook",
    "a musician in a local band",
    "a long-distance runner",
    "a farmer",
    "someone recovering from an injury",
    "a librarian",
    "a college freshman",
    "a night-shift security guard",
    "a grandparent learning to use a smartphone",
]

# topic -> (situations, requests). A situation is one sentence of context; a request is what the user wants.
TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "work": (
        [
            "My team missed an important deadline last week.",
            "I have my yearly performance review on Friday.",
            "A colleague keeps taking credit for my ideas.",
            "I was just offered a promotion that means managing my former peers.",
            "I have been in the same role for five years without a raise.",
        ],
        [
            "How should I bring this up with my boss?",
            "What would you do in my position?",
            "Can you help me plan what to say?",
            "What mistakes should I avoid here?",
            "Give me a step-by-step plan for the next two weeks.",
        ],
    ),
    "health": (
        [
            "I have been sleeping badly for about a month.",
            "My doctor told me to get more exercise, but I hate gyms.",
            "I get headaches most afternoons at work.",
            "I want to cut down on sugar without feeling miserable.",
            "I sit at a desk for ten hours a day.",
        ],
        [
            "What small changes could actually help?",
            "Where should I start?",
            "Which habits matter most, and which are hype?",
            "How can I stick with it past the first week?",
            "What should I ask my doctor about at my next visit?",
        ],
    ),
    "money": (
        [
            "I just got my first full-time paycheck.",
            "I have three credit cards with balances on them.",
            "My rent is going up by fifteen percent next month.",
            "I want to save for a trip next summer.",
            "My partner and I argue about spending.",
        ],
        [
            "How should I think about budgeting?",
            "What is a sensible first step?",
            "Can you explain my options in plain language?",
            "What would a simple plan look like?",
            "What are the trade-offs I should understand?",
        ],
    ),
    "learning": (
        [
            "I want to learn Spanish before a trip in six months.",
            "I keep forgetting what I read in textbooks.",
            "I am teaching myself to code in the evenings.",
            "I failed a statistics exam and have to retake it.",
            "I would like to understand how the stock market works.",
        ],
        [
            "How would you structure my study time?",
            "What resources or methods work best?",
            "Can you explain the core idea so it finally clicks?",
            "How do I know if I am making progress?",
            "Quiz me with a few questions to get started.",
        ],
    ),
    "relationships": (
        [
            "My best friend has been distant since she started a new job.",
            "I had an argument with my brother at a family dinner.",
            "My roommate never does the dishes.",
            "I want to reconnect with an old friend I lost touch with.",
            "My partner wants to move to another city and I am not sure.",
        ],
        [
            "How do I start that conversation?",
            "What might be going on from their side?",
            "Could you draft a short message I could send?",
            "How do I stay calm if it gets tense?",
            "Is it worth bringing up at all?",
        ],
    ),
    "cooking": (
        [
            "My sourdough bread keeps coming out flat.",
            "I have guests coming and one of them is vegan.",
            "I only have a microwave and a kettle in my dorm.",
            "I bought too many zucchinis at the market.",
            "I want to cook more at home instead of ordering takeout.",
        ],
        [
            "What should I try?",
            "Give me a simple recipe I can follow.",
            "What am I probably doing wrong?",
            "Plan three easy meals for me.",
            "Which basic techniques are worth learning first?",
        ],
    ),
    "technology": (
        [
            "My laptop has become painfully slow.",
            "I need to choose between two cloud storage services.",
            "My Python script crashes with a KeyError on some inputs.",
            "I want to build a small website for my pottery.",
            "My parents keep getting scam emails.",
        ],
        [
            "What should I check first?",
            "Explain it to me without jargon.",
            "Walk me through the fix.",
            "What would you recommend and why?",
            "What are the risks I should know about?",
        ],
    ),
    "creativity": (
        [
            "I want to write a short story for a contest.",
            "I have been stuck on the same painting for weeks.",
            "I need a toast for my sister's wedding.",
            "I am starting a podcast about local history.",
            "I would like to write song lyrics but never have before.",
        ],
        [
            "Help me get unstuck.",
            "Give me a few ideas to choose from.",
            "Could you write a first draft I can rework?",
            "What makes this kind of piece land well?",
            "How do I find my own voice in it?",
        ],
    ),
    "travel": (
        [
            "I am visiting Japan for the first time in the spring.",
            "My flight was cancelled and I am stuck overnight at an airport.",
            "I want to take a long train trip across Europe on a budget.",
            "I am nervous about traveling alone.",
            "I have a week off and no plans.",
        ],
        [
            "What should I plan for?",
            "What do people usually get wrong?",
            "Give me a rough itinerary.",
            "How can I make the most of it?",
            "What should I pack or prepare?",
        ],
    ),
    "ethics": (
        [
            "I found a wallet with cash and no ID.",
            "My friend asked me to lie to his girlfriend for him.",
            "I noticed a billing error in my favor at a restaurant.",
            "My company asked me to promote a product I think is bad.",
            "A classmate copied my homework and the teacher noticed.",
        ],
        [
            "What is the right thing to do?",
            "How should I weigh the options?",
            "Would it be wrong to stay quiet?",
            "What would you say in my place?",
            "Help me think it through honestly.",
        ],
    ),
}

CONSTRAINTS = [
    "",
    "",
    "",
    " Please keep it short.",
    " Keep it under 100 words.",
    " Use bullet points.",
    " Be honest, even if it is not what I want to hear.",
    " Explain it like I'm twelve.",
    " Give me just the most important point.",
    " I'd appreciate a bit of detail.",
    " Assume I have very little time.",
    " Please be direct.",
]

OPENERS = ["I'm {audience}.", "As {audience}, I could use some help.", "Quick question from {audience}."]

PERSONA_CUES = [
    " I'd love to hear how {name} would put it.",
    " Answer in your own style, {name}.",
    " I came to you specifically, {name}, so don't hold back.",
    " What's your personal take?",
    " Tell me a little about how you see it, too.",
]
