"""From a task's prompts to scored completions, for training and for evaluation.

prompts.py   how a prompt becomes the model's input (chat template or plain), where a completion ends
collect.py   groups of completions sampled from the policy and graded by the task's reward
evaluate.py  greedy accuracy or pass@k on a split
"""
