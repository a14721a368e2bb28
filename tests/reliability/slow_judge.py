"""A scripted judge slow enough to be killed mid-stage: the longer last reply wins, equal lengths tie."""

import time


def longer(a, b):
    time.sleep(0.3)
    la, lb = len(a[-1]["content"]), len(b[-1]["content"])
    return f"lengths {la} and {lb}: " + ("[[A]]" if la > lb else "[[B]]" if lb > la else "[[C]]")
