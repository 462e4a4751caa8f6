"""CLIP in Flax: model, Hugging Face checkpoint conversion, tokenizer, preprocessing."""
