"""Pictures people would rather look at than read: rank lists and matches (``visualize``) and where each [PART]
token looks (``part_attention``)."""
