"""Supernets trained elsewhere: official checkpoints mapped onto archselect's spaces (`official`), read without
unpickling (`checkpoints`), and any PyTorch supernet adapted to the selectors (`external`)."""
