"""Stand-ins for the far sides a test cannot reach (Slack); real servers on 127.0.0.1, not mocks."""
