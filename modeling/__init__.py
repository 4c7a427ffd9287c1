"""Models: GPT and BERT on one transformer stack, built from a `ModelConfig` by `models.build`.

Names carry their shape as a suffix, one letter per axis, in order: `x_btd` is [B, T, D],
`w_q_dhk` is [D, H, K], `mask_b1ts` is [B, 1, T, S]. The letters, for the whole codebase:
  b  batch                          t  query positions (the sequence)
  s  key positions                  d  model width (d_model)
  h  heads                          k  head width (head_dim; k2: half of it, in rotary positions)
  v  vocabulary                     f  MLP width (d_ff)
  l  layers                         p  predicted (masked) positions; rows of the position table
  c  choices                        n  labels (classifier classes)
  y  token types (sentence A/B)     i, o  input and output width of a plain dense layer
  x  any leading axes (`hidden_xd`: [..., D])
  1  an axis of size 1, kept for broadcasting
"""
