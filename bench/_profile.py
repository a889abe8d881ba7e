"""CPU profile of this process, all threads, with py-spy (sampling from outside, so the
pipeline runs at nearly full speed): which code holds the GIL, by package and by line.

py-spy is optional (``pip install py-spy``); without it the profile is skipped and said so.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+):(?P<line>\d+)\)$")
# (category, path fragment), first match wins
CATEGORIES = (
    ("moto (stands in for AWS)", ("/moto/", "/responses/", "/werkzeug/", "/xmltodict")),
    ("local harness (emulator, runtime)", ("/chatbatch/local/",)),
    ("chatbatch", ("/functions/chatbatch/", "/site-packages/chatbatch/")),
    ("botocore/boto3", ("/botocore/", "/boto3/", "/s3transfer/", "/urllib3/")),
    ("httpx/httpcore/h11", ("/httpx/", "/httpcore/", "/h11/", "/anyio/", "/sniffio/")),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("powertools", ("/aws_lambda_powertools/",)),
    ("asyncio/threads", ("/asyncio/", "/threading.py", "/concurrent/", "/selectors.py")),
    ("json", ("/json/",)),
)


def category(path: str) -> str:
    for name, fragments in CATEGORIES:
        if any(f in path for f in fragments):
            return name
    return "other (stdlib, logging, ...)"


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Frame:
    func: str
    file: str
    line: int

    @property
    def where(self) -> str:
        short = re.sub(r"^.*/(functions|site-packages)/", "", self.file)
        return f"{short}:{self.line} ({self.func})"


def parse_frame(text: str) -> Frame | None:
    m = FRAME.match(text.strip())
    return Frame(m["func"], m["file"], int(m["line"])) if m else None


@dataclass
class Profile:
    samples: int = 0
    leaf_by_category: Counter[str] = field(default_factory=Counter)
    under_moto: int = 0  # samples with a moto frame anywhere on the stack
    ours_innermost: Counter[str] = field(default_factory=Counter)  # innermost chatbatch frame
    ours_functions: Counter[str] = field(default_factory=Counter)  # inclusive, per function
    leaves: Counter[str] = field(default_factory=Counter)  # leaf frames outside moto
    moto_operations: Counter[str] = field(default_factory=Counter)  # moto's response handler

    def add(self, frames: list[Frame], count: int) -> None:
        self.samples += count
        if not frames:
            return
        self.leaf_by_category[category(frames[-1].file)] += count
        if any(category(f.file).startswith("moto") for f in frames):
            self.under_moto += count
            handlers = [f for f in frames if "/moto/" in f.file and f.file.endswith("responses.py")]
            operation = handlers[-1].func if handlers else "(moto, other)"
            self.moto_operations[operation] += count
            return
        self.leaves[frames[-1].where] += count
        ours = [f for f in frames if category(f.file) == "chatbatch"]
        if ours:
            self.ours_innermost[ours[-1].where] += count
            for name in {f"{re.sub(r':[0-9]+ ', ' ', f.where)}" for f in ours}:
                self.ours_functions[name] += count

    def share(self, n: int) -> float:
        return n / self.samples if self.samples else 0.0


def parse(raw: str) -> Profile:
    profile = Profile()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in (parse_frame(t) for t in stack.split(";")) if f]
        profile.add(frames, int(count))
    return profile


@contextmanager
def sampled(rate: int = 200) -> Iterator[list[Profile]]:
    """Profile this process while the block runs; the list gets the Profile (or stays empty)."""
    found: list[Profile] = []
    exe = py_spy()
    if exe is None:
        yield found
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(os.getpid()),
                "--format",
                "raw",
                "--gil",
                "--nonblocking",
                "--full-filenames",
                "--rate",
                str(rate),
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield found
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if out.exists():
                found.append(parse(out.read_text()))
