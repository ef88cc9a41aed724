"""A slash-command load generator that runs in its own process, as Slack does.

    python -m bench.load < job.json > result.json

The job (JSON on stdin) names the bot's URL, the signing secret and the commands; every
command is sent at once as a signed form POST (one new connection each), and the answer
(JSON on stdout) holds each command's HTTP status and seconds until the bot's answer.
`burst` runs this module as a child process, so the bot's event loop measures only the bot.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from bot.playground import slack_client

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60.0


@dataclass(frozen=True)
class Command:
    """One slash command to send (`response_url` comes from the emulator)."""

    command: str
    text: str
    channel: str
    user: str
    team: str
    response_url: str


@dataclass(frozen=True)
class Answer:
    status: int
    latency: float  # seconds from sending to the bot's answer
    sent_at: float  # time.monotonic() when the burst was sent (the same clock in every process)


async def send_all(url: str, secret: str, commands: list[Command]) -> list[Answer]:
    """Send every command at once; return the answers in the commands' order."""
    bodies = [
        slack_client.form_body(
            slack_client.slash_command(
                command=c.command,
                text=c.text,
                user_id=c.user,
                user_name=c.user.lower(),
                channel_id=c.channel,
                channel_name=c.channel.lower(),
                team_id=c.team,
                response_url=c.response_url,
            )
        )
        for c in commands
    ]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sent_at = time.monotonic()
        deliveries = await asyncio.gather(
            *(
                slack_client.post_signed(
                    session,
                    url,
                    body,
                    content_type="application/x-www-form-urlencoded",
                    signing_secret=secret,
                )
                for body in bodies
            )
        )
    return [Answer(d.status, d.latency, sent_at) for d in deliveries]


async def burst(url: str, secret: str, commands: list[Command]) -> list[Answer]:
    """Run `send_all` in a child process (`python -m bench.load`) and return its answers."""
    job = json.dumps({"url": url, "secret": secret, "commands": [asdict(c) for c in commands]})
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load",
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(child.communicate(job.encode()), timeout=TIMEOUT + 30)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise
    if child.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit status {child.returncode})")
    return [Answer(**answer) for answer in json.loads(out)]


def main() -> None:
    job = json.load(sys.stdin)
    commands = [Command(**c) for c in job["commands"]]
    answers = asyncio.run(send_all(job["url"], job["secret"], commands))
    json.dump([asdict(a) for a in answers], sys.stdout)


if __name__ == "__main__":
    main()
