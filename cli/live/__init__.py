"""The live view of `callstate load` and `callstate watch`: figures kept as entries arrive
(`stats`) and drawn on a terminal or as lines (`view`)."""
