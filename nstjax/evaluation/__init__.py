"""How good a stylization is at the sizes users run it (`python -m nstjax.evaluate`)."""
