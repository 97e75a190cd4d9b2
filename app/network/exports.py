"""The community graph as node-link JSON, Cytoscape.js JSON, GraphML and GEXF, generated
piece by piece from the snapshot so that a large export never exists whole in memory.

Nodes carry the member's display name, kind, role and the day they joined the graph; nothing
else about them. Ties carry minutes, exchange count and first and last day of service.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date
from xml.sax.saxutils import escape, quoteattr

from app.network.graph import GraphView
from app.network.schemas import GraphFormat

CHUNK_BYTES = 64 * 1024
# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", value))


def _attr(value: str) -> str:
    return quoteattr(_NOT_XML.sub("\ufffd", value))


MEDIA_TYPES = {
    GraphFormat.node_link: "application/json",
    GraphFormat.cytoscape: "application/json",
    GraphFormat.graphml: "application/graphml+xml",
    GraphFormat.gexf: "application/gexf+xml",
}
EXTENSIONS = {
    GraphFormat.node_link: "json",
    GraphFormat.cytoscape: "cyjs",
    GraphFormat.graphml: "graphml",
    GraphFormat.gexf: "gexf",
}


def _chunked(pieces: Iterator[str]) -> Iterator[bytes]:
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _node_fields(view: GraphView, base: int, started: list[date]) -> dict[str, object]:
    member = view.base.members[base]
    return {
        "id": str(member.id),
        "display_name": member.display_name,
        "kind": member.kind,
        "role": member.role,
        "joined_on": started[base].isoformat(),
    }


def _edge_fields(view: GraphView, edge: int) -> dict[str, object]:
    graph = view.base
    return {
        "source": str(graph.members[graph.sources[edge]].id),
        "target": str(graph.members[graph.targets[edge]].id),
        "minutes": graph.minutes[edge],
        "count": graph.counts[edge],
        "first_date": graph.first[edge].isoformat(),
        "last_date": graph.last[edge].isoformat(),
    }


def _graph_attributes(view: GraphView) -> dict[str, object]:
    graph = view.base
    return {
        "community_id": str(graph.community_id),
        "since": graph.window.since.isoformat() if graph.window.since else None,
        "until": graph.window.until.isoformat() if graph.window.until else None,
        "computed_at": graph.computed_at.isoformat(),
    }


def node_link(view: GraphView) -> Iterator[str]:
    """``networkx.node_link_graph(data)`` reads this (networkx >= 3.4: ``edges`` key)."""
    started = view.base.started_on()
    yield '{"directed":true,"multigraph":false,"graph":' + _dumps(_graph_attributes(view))
    yield ',"nodes":['
    for i, base in enumerate(view.nodes):
        yield ("," if i else "") + _dumps(_node_fields(view, base, started))
    yield '],"edges":['
    for i, edge in enumerate(view.edges):
        yield ("," if i else "") + _dumps(_edge_fields(view, edge))
    yield "]}"


def cytoscape(view: GraphView) -> Iterator[str]:
    """Cytoscape.js elements JSON (``networkx.cytoscape_graph`` reads it too)."""
    started = view.base.started_on()
    yield '{"data":' + _dumps(_graph_attributes(view))
    yield ',"directed":true,"multigraph":false,"elements":{"nodes":['
    for i, base in enumerate(view.nodes):
        fields = _node_fields(view, base, started)
        fields["value"] = fields["id"]
        fields["name"] = fields["display_name"]
        yield ("," if i else "") + _dumps({"data": fields})
    yield '],"edges":['
    for i, edge in enumerate(view.edges):
        fields = {"id": f"e{edge}", **_edge_fields(view, edge)}
        yield ("," if i else "") + _dumps({"data": fields})
    yield "]}}"


_GRAPHML_KEYS = (
    ("node", "display_name", "string"),
    ("node", "kind", "string"),
    ("node", "role", "string"),
    ("node", "joined_on", "string"),
    ("edge", "minutes", "long"),
    ("edge", "count", "int"),
    ("edge", "first_date", "string"),
    ("edge", "last_date", "string"),
)


def graphml(view: GraphView) -> Iterator[str]:
    graph = view.base
    started = graph.started_on()
    yield (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
        'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">\n'
    )
    for domain, name, kind in _GRAPHML_KEYS:
        yield (f'<key id="{name}" for="{domain}" attr.name="{name}" attr.type="{kind}"/>\n')
    yield f'<graph id="{graph.community_id}" edgedefault="directed">\n'
    for base in view.nodes:
        member = graph.members[base]
        yield (
            f'<node id="{member.id}">'
            f'<data key="display_name">{_text(member.display_name)}</data>'
            f'<data key="kind">{member.kind}</data>'
            f'<data key="role">{member.role}</data>'
            f'<data key="joined_on">{started[base].isoformat()}</data>'
            "</node>\n"
        )
    for edge in view.edges:
        yield (
            f'<edge source="{graph.members[graph.sources[edge]].id}" '
            f'target="{graph.members[graph.targets[edge]].id}">'
            f'<data key="minutes">{graph.minutes[edge]}</data>'
            f'<data key="count">{graph.counts[edge]}</data>'
            f'<data key="first_date">{graph.first[edge].isoformat()}</data>'
            f'<data key="last_date">{graph.last[edge].isoformat()}</data>'
            "</edge>\n"
        )
    yield "</graph>\n</graphml>\n"


def gexf(view: GraphView) -> Iterator[str]:
    """GEXF 1.2, dynamic: each member appears on the day they joined (or first tie) and each
    tie on its first day of service, so Gephi's timeline plays the network's growth."""
    graph = view.base
    started = graph.started_on()
    days = [started[b] for b in view.nodes] + [graph.first[e] for e in view.edges]
    start = min(days).isoformat() if days else None
    end = graph.window.until or (max(graph.last[e] for e in view.edges) if view.edges else None)
    bounds = (f' start="{start}"' if start else "") + (f' end="{end.isoformat()}"' if end else "")
    yield (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gexf xmlns="http://www.gexf.net/1.2draft" version="1.2">\n'
        f'<meta lastmodifieddate="{graph.computed_at.date().isoformat()}">'
        "<creator>timebank</creator>"
        f"<description>Support network of community {graph.community_id}</description></meta>\n"
        f'<graph mode="dynamic" defaultedgetype="directed" timeformat="date"{bounds}>\n'
        '<attributes class="node" mode="static">'
        '<attribute id="kind" title="kind" type="string"/>'
        '<attribute id="role" title="role" type="string"/>'
        "</attributes>\n"
        '<attributes class="edge" mode="static">'
        '<attribute id="minutes" title="minutes" type="long"/>'
        '<attribute id="count" title="count" type="integer"/>'
        '<attribute id="last_date" title="last_date" type="string"/>'
        "</attributes>\n<nodes>\n"
    )
    for base in view.nodes:
        member = graph.members[base]
        yield (
            f'<node id="{member.id}" label={_attr(member.display_name)} '
            f'start="{started[base].isoformat()}"><attvalues>'
            f'<attvalue for="kind" value="{member.kind}"/>'
            f'<attvalue for="role" value="{member.role}"/>'
            "</attvalues></node>\n"
        )
    yield "</nodes>\n<edges>\n"
    for edge in view.edges:
        yield (
            f'<edge id="{edge}" source="{graph.members[graph.sources[edge]].id}" '
            f'target="{graph.members[graph.targets[edge]].id}" weight="{graph.minutes[edge]}" '
            f'start="{graph.first[edge].isoformat()}"><attvalues>'
            f'<attvalue for="minutes" value="{graph.minutes[edge]}"/>'
            f'<attvalue for="count" value="{graph.counts[edge]}"/>'
            f'<attvalue for="last_date" value="{graph.last[edge].isoformat()}"/>'
            "</attvalues></edge>\n"
        )
    yield "</edges>\n</graph>\n</gexf>\n"


WRITERS = {
    GraphFormat.node_link: node_link,
    GraphFormat.cytoscape: cytoscape,
    GraphFormat.graphml: graphml,
    GraphFormat.gexf: gexf,
}


def export(view: GraphView, fmt: GraphFormat) -> Iterator[bytes]:
    return _chunked(WRITERS[fmt](view))
