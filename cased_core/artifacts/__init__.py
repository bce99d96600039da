"""The model and the caption database: loading, building, searching, identifying them."""
