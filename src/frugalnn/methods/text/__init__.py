"""Small-footprint NLP: hashed character n-gram networks under a memory budget."""
