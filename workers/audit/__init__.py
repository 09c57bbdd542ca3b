"""The trusted auditor (``auditor``): replay a miner's job and compare the outputs within tolerance bands
(``image_check``, ``text_check``, ``bands``)."""
