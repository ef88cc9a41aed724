"""The offline mode: a Slack emulator the bot talks to exactly as to Slack (tests, playground).

`SlackEmulator` lives in `bot.playground.emulator`; importing this package does not start
anything.
"""
