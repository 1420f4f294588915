"""The compression adapters in real pipelines: a LangGraph StateGraph, LangChain's
ContextualCompressionRetriever over an in-memory vector store, and a LlamaIndex query
engine. Retrieval uses the real MiniLM embedder; only the final LLM is a stand-in."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from graphthrift.compress import ExtractiveCompressor
from graphthrift.embed import default_embedder
from graphthrift.langchain.compress import (
    CompressorDocumentCompressor,
    ExtractiveDocumentCompressor,
)
from graphthrift.langgraph.compress import compress_context
from graphthrift.text import seed_tiktoken_cache

BRIDGE = (
    "The Golden Gate Bridge is a suspension bridge in California. It opened on May 27, "
    "1937, after four years of work. The bridge is painted International Orange."
)
BANANAS = "Bananas are yellow when ripe. They grow in bunches. Monkeys are said to like them."
CARS = "Cars need fuel or electricity. Many cities restrict traffic in their centres."
QUESTION = "When did the Golden Gate Bridge open?"
DOCS = [
    Document(BANANAS, id="d1", metadata={"source": "fruit.txt", "page": 1}),
    Document(BRIDGE, id="d2", metadata={"source": "bridges.txt", "page": 7}),
    Document(CARS, id="d3", metadata={"source": "cars.txt", "page": 2}),
]


class MiniLMEmbeddings(Embeddings):
    """graphthrift's MiniLM as LangChain ``Embeddings``, for a real vector retriever."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return default_embedder().embed(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


# -- LangGraph ------------------------------------------------------------------------------


class RagState(TypedDict, total=False):
    question: str
    documents: list[Document]
    answer: str
    compression: dict[str, Any]


def _graph(**node_kwargs: Any) -> Any:
    def retrieve(state: RagState) -> dict[str, Any]:
        return {"documents": DOCS}

    def generate(state: RagState) -> dict[str, Any]:
        return {"answer": " | ".join(d.page_content for d in state["documents"])}

    builder = StateGraph(RagState)
    builder.add_node("retrieve", retrieve)
    builder.add_node("compress", compress_context(**node_kwargs))
    builder.add_node("generate", generate)
    builder.add_edge(START, "retrieve")
    builder.add_edge("retrieve", "compress")
    builder.add_edge("compress", "generate")
    builder.add_edge("generate", END)
    return builder.compile()


def test_langgraph_node_compresses_documents_and_keeps_metadata() -> None:
    graph = _graph(target_ratio=0.5, stats_key="compression")
    out = graph.invoke({"question": QUESTION})
    docs = out["documents"]
    assert [d.id for d in docs] == ["d2"]  # irrelevant documents dropped whole
    assert docs[0].metadata == {"source": "bridges.txt", "page": 7}
    assert "May 27, 1937" in docs[0].page_content and len(docs[0].page_content) < len(BRIDGE)
    assert out["answer"] == docs[0].page_content
    stats = out["compression"]
    assert stats["kept_tokens"] < stats["original_tokens"]
    assert stats["removed_tokens"] == stats["original_tokens"] - stats["kept_tokens"]
    assert DOCS[1].page_content == BRIDGE  # inputs are never mutated


def test_langgraph_node_async_matches_sync() -> None:
    graph = _graph(target_ratio=0.5)
    sync = graph.invoke({"question": QUESTION})
    result = asyncio.run(graph.ainvoke({"question": QUESTION}))
    assert result["documents"] == sync["documents"]


def test_langgraph_node_reads_strings_dicts_and_messages() -> None:
    class State(TypedDict, total=False):
        messages: Annotated[list[Any], operator.add]
        chunks: list[Any]
        kept: list[Any]

    builder = StateGraph(State)
    builder.add_node(
        "compress",
        compress_context(
            ExtractiveCompressor(target_ratio=0.5, embedder=False),
            documents_key="chunks",
            question_key="messages",
            output_key="kept",
        ),
    )
    builder.add_edge(START, "compress")
    graph = builder.compile()
    out = graph.invoke(
        {
            "messages": [HumanMessage(QUESTION), AIMessage("Let me look.")],
            "chunks": [BANANAS, {"page_content": BRIDGE, "url": "b"}, CARS],
        }
    )
    assert out["chunks"][0] == BANANAS  # the input key is left alone
    assert len(out["kept"]) == 1 and out["kept"][0]["url"] == "b"
    assert "1937" in out["kept"][0]["page_content"]


def test_langgraph_node_errors_are_clear() -> None:
    node = compress_context(max_tokens=50)
    with pytest.raises(KeyError, match="'question'"):
        node.invoke({"documents": [BRIDGE]})
    with pytest.raises(TypeError, match=r"documents\[1\] is int"):
        node.invoke({"question": "q", "documents": [BRIDGE, 5]})
    assert node.invoke({"question": "q", "documents": []}) == {"documents": []}


def test_langgraph_node_records_the_saving_with_run_tags(ledger: Any, tenant: str) -> None:
    graph = _graph(target_ratio=0.5, model="gpt-4o-mini", ledger=ledger, tags={"feature": "rag"})
    graph.invoke(
        {"question": QUESTION},
        config={"metadata": {"tenant_id": tenant}, "configurable": {"thread_id": "th1"}},
    )
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    assert len(rows) == 1
    row = rows[0]
    assert (row["kind"], row["layer"], row["node"]) == ("compression", "compression", "compress")
    assert (row["feature"], row["thread_id"], row["model"]) == ("rag", "th1", "gpt-4o-mini")
    assert 0 < row["saved_tokens"] < row["input_tokens"]


# -- LangChain ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vector_retriever() -> Any:
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embedding=MiniLMEmbeddings())
    store.add_documents(DOCS)
    return store.as_retriever(search_kwargs={"k": 3})


def test_contextual_compression_retriever(vector_retriever: Any) -> None:
    retrievers = pytest.importorskip("langchain_classic.retrievers")
    retriever = retrievers.ContextualCompressionRetriever(
        base_compressor=ExtractiveDocumentCompressor(target_ratio=0.5),
        base_retriever=vector_retriever,
    )
    docs = retriever.invoke(QUESTION)
    assert [d.id for d in docs] == ["d2"]
    assert docs[0].metadata == {"source": "bridges.txt", "page": 7}
    assert "May 27, 1937" in docs[0].page_content
    adocs = asyncio.run(retriever.ainvoke(QUESTION))
    assert [(d.id, d.page_content) for d in adocs] == [(d.id, d.page_content) for d in docs]


def test_contextual_compression_retriever_tags_the_ledger(
    vector_retriever: Any, ledger: Any, tenant: str
) -> None:
    retrievers = pytest.importorskip("langchain_classic.retrievers")
    compressor = CompressorDocumentCompressor(
        compressor=ExtractiveCompressor(target_ratio=0.5, model="gpt-4o-mini"),
        ledger=ledger,
        tags={"feature": "docs"},
    )
    retriever = retrievers.ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=vector_retriever
    )
    asyncio.run(retriever.ainvoke(QUESTION, config={"metadata": {"tenant_id": tenant}}))
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    assert len(rows) == 1 and rows[0]["feature"] == "docs" and rows[0]["saved_tokens"] > 0


def test_document_compressor_keeps_every_documents_metadata() -> None:
    dc = ExtractiveDocumentCompressor(scope="chunk", target_ratio=0.6, embedder=False)
    out = dc.compress_documents(DOCS, QUESTION)
    assert [d.id for d in out] == ["d1", "d2", "d3"]
    assert [d.metadata for d in out] == [d.metadata for d in DOCS]
    assert all(len(o.page_content) <= len(d.page_content) for o, d in zip(out, DOCS, strict=True))
    assert dc.compress_documents([], QUESTION) == []


# -- LlamaIndex -----------------------------------------------------------------------------


def _llama_embedding() -> Any:
    from llama_index.core.embeddings import BaseEmbedding

    class MiniLMEmbedding(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return self._get_text_embedding(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_text_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return list(map(float, default_embedder().embed([text])[0]))

    return MiniLMEmbedding(model_name="minilm")


def _nodes() -> list[Any]:
    from llama_index.core.schema import TextNode

    return [
        TextNode(id_=f"n{i}", text=d.page_content, metadata=dict(d.metadata))
        for i, d in enumerate(DOCS)
    ]


def test_llamaindex_query_engine_keeps_node_metadata_and_scores() -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.llms import MockLLM

    from graphthrift.llamaindex.postprocessor import CompressionPostprocessor

    # LlamaIndex counts with cl100k; graphthrift's tiktoken cache must hold it too.
    seed_tiktoken_cache(("cl100k_base",))
    index = VectorStoreIndex(_nodes(), embed_model=_llama_embedding())
    retrieved = index.as_retriever(similarity_top_k=3).retrieve(QUESTION)
    scores = {r.node.node_id: r.score for r in retrieved}
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=3,
        node_postprocessors=[CompressionPostprocessor(target_ratio=0.5)],
    )
    response = engine.query(QUESTION)
    sources = response.source_nodes
    assert [s.node.node_id for s in sources] == ["n1"]
    assert sources[0].node.metadata == {"source": "bridges.txt", "page": 7}
    assert sources[0].score == scores["n1"]
    assert "May 27, 1937" in sources[0].node.get_content()
    aresponse = asyncio.run(engine.aquery(QUESTION))
    assert [s.node.get_content() for s in aresponse.source_nodes] == [
        s.node.get_content() for s in sources
    ]


def test_llamaindex_non_text_nodes_pass_through(ledger: Any, tenant: str) -> None:
    from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

    from graphthrift.llamaindex.postprocessor import CompressionPostprocessor

    image = NodeWithScore(
        node=ImageNode(image_url="http://x/y.png", text="a bridge photo"), score=0.5
    )
    empty = NodeWithScore(node=TextNode(text="", id_="e"), score=0.1)
    texts = [NodeWithScore(node=n, score=1.0 - i / 10) for i, n in enumerate(_nodes())]
    pp = CompressionPostprocessor(
        target_ratio=0.5,
        embedder=False,
        model="gpt-4o-mini",
        ledger=ledger,
        tags={"tenant_id": tenant},
    )
    out = pp.postprocess_nodes([image, *texts, empty], query_str=QUESTION)
    assert out[0] is image  # untouched, and not counted
    assert [o.node.node_id for o in out[1:]] == ["n1"]
    assert out[1].score == 0.9 and out[1].node.metadata["page"] == 7
    assert texts[1].node.get_content() == BRIDGE  # the input node is not modified
    assert asyncio.run(pp.apostprocess_nodes([image], query_str=QUESTION)) == [image]
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    assert len(rows) == 1 and rows[0]["saved_tokens"] > 0 and rows[0]["kind"] == "compression"


def test_langgraph_node_on_a_state_without_its_keys_names_compress_state() -> None:
    """Issue 11, item 7: on plain MessagesState the node used to compress nothing, silently."""
    from langgraph.graph import MessagesState

    from graphthrift.errors import StateSchemaError

    builder = StateGraph(MessagesState)
    builder.add_node("compress", compress_context(max_tokens=50, question_key="messages"))
    builder.add_edge(START, "compress")
    with pytest.raises(StateSchemaError, match="CompressState") as info:
        builder.compile().invoke({"messages": [HumanMessage(QUESTION)]})
    assert info.value.key == "documents" and info.value.node == "compress_context"


# ---------------------------------------------------------------- one argument scheme (issue 15)


def test_a_compressor_with_compressor_settings_is_refused_in_every_adapter() -> None:
    from graphthrift.errors import ConfigError
    from graphthrift.llamaindex.postprocessor import CompressionPostprocessor

    compressor = ExtractiveCompressor(max_tokens=50, embedder=False)
    with pytest.raises(ConfigError, match="target_ratio") as info:
        compress_context(compressor, target_ratio=0.5)
    assert info.value.name == "compressor"
    with pytest.raises(ConfigError, match="max_tokens"):
        CompressionPostprocessor(compressor, max_tokens=100)
    with pytest.raises(ConfigError, match="model"):
        ExtractiveDocumentCompressor(compressor=compressor, model="gpt-4o-mini")
    # without a conflict each adapter takes the compressor as it is
    assert CompressionPostprocessor(compressor).compressor is compressor
    assert ExtractiveDocumentCompressor(compressor=compressor).compressor is compressor


def test_langgraph_node_tags_come_from_the_kernel_alone(tenant: str) -> None:
    from graphthrift.kernel import run_tags
    from graphthrift.langgraph.compress import config_tags

    config = {
        "metadata": {"tenant_id": tenant, "feature": "rag", "user_id": "u1", "model": "x"},
        "configurable": {"thread_id": 7},
    }
    tags = config_tags(config)  # type: ignore[arg-type]
    assert tags == {k: v for k, v in run_tags(config).items() if k != "user_id"}
    assert tags["thread_id"] == "7" and "model" not in tags


def test_llamaindex_postprocessor_reads_tags_bound_with_graphthrift_scoped(
    ledger: Any, tenant: str
) -> None:
    """Every adapter reads the run's tags through the kernel, so ``graphthrift.scoped``
    reaches the LlamaIndex postprocessor's ledger rows as it reaches the other adapters'."""
    from llama_index.core.schema import NodeWithScore

    import graphthrift
    from graphthrift.llamaindex.postprocessor import CompressionPostprocessor

    pp = CompressionPostprocessor(target_ratio=0.5, embedder=False, ledger=ledger)
    texts = [NodeWithScore(node=n, score=1.0) for n in _nodes()]
    with graphthrift.scoped(tenant_id=tenant, feature="li-rag"):
        pp.postprocess_nodes(texts, query_str=QUESTION)
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    assert len(rows) == 1 and rows[0]["feature"] == "li-rag"
