"""The training stage: `genrec sft`, the recipe (setup -> fit -> save) that fine-tunes a base model with TRL +
PEFT LoRA into a genrec model directory."""
