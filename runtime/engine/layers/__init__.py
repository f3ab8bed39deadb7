"""Model building blocks: paged attention, rotary embedding, (quantized) linear layers."""
