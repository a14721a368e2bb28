"""A scripted judge slow enough to be killed mid-stage: the longer last reply wins, equal lengths tie. Each
call appends a line to the file named by $REBELFLOW_TEST_JUDGE_LOG (when set), so a test counts the calls."""

import os
import time


def longer(a, b):
    time.sleep(0.3)
    if os.environ.get("REBELFLOW_TEST_JUDGE_LOG"):
        with open(os.environ["REBELFLOW_TEST_JUDGE_LOG"], "a") as fh:
            fh.write("call\n")
    la, lb = len(a[-1]["content"]), len(b[-1]["content"])
    return f"lengths {la} and {lb}: " + ("[[A]]" if la > lb else "[[B]]" if lb > la else "[[C]]")
