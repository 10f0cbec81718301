"""Conversations shared by the generation backend tests: different lengths, a system message, a retry turn."""

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "What is 12 plus 30? Think step by step."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Your answer is incorrect. Please try again."},
    ],
    [{"role": "user", "content": "A much longer prompt than the others, so that the batch needs plenty of left padding."}],
]
