"""Charts as Prefect artifacts: a PNG embedded in a markdown artifact, beside the run's report.

Prefect's OSS server stores artifacts as data, not files: a markdown artifact whose image is a
`data:image/png;base64,…` URI is a picture the UI shows in the run's Artifacts tab and that every
machine reading the API gets, with nothing written to a disk or a web server of ours.
"""

from __future__ import annotations

import base64

from prefect.artifacts import acreate_markdown_artifact, create_markdown_artifact

from medic.core.report import artifact_key

__all__ = ["apublish_chart", "chart_markdown", "publish_chart"]


def chart_markdown(title: str, png: bytes, caption: str = "") -> str:
    """Markdown showing `png` inline (a data URI), with a caption under it."""
    data = base64.b64encode(png).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\n{caption}".rstrip() + "\n"


def publish_chart(key_parts: tuple[str, ...], title: str, png: bytes, caption: str = "") -> None:
    """One chart as a markdown artifact of the current flow run (key from `key_parts`)."""
    create_markdown_artifact(markdown=chart_markdown(title, png, caption), key=artifact_key(*key_parts),
                             description=title)


async def apublish_chart(key_parts: tuple[str, ...], title: str, png: bytes, caption: str = "") -> None:
    """`publish_chart` for async flows."""
    await acreate_markdown_artifact(markdown=chart_markdown(title, png, caption), key=artifact_key(*key_parts),
                                    description=title)
