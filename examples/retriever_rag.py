"""A LangChain retriever over cachedvec in a RAG chain (no LLM needed).

Splits the employee handbook and the kettle manual from the bundled corpus
into LangChain documents, indexes them in a ``CachedVectorStore`` whose
embeddings go through a SQLite cache, and runs a retrieval chain built from
``langchain_core`` runnables: retriever -> context -> chat prompt. The chain
stops where an LLM would take over, and the example prints what that LLM
would receive: the retrieved context and the formatted prompt. Append
``| llm | StrOutputParser()`` to the chain to answer for real.

    python examples/retriever_rag.py [--workdir DIR] [--question "..."]

Each question's answer is in the context it prints (the carry-over rule;
error E1, dry boil). Retrieval is only as good as the embedding model: the
small bundled one finds the error-code table for "flashes red once and
won't heat" only 4th, behind sections about heating, unless the question
mentions the error code; ``-k`` (default 4) sets how many chunks the LLM
gets.

The work folder (the cache and the saved index) defaults to a fresh
temporary folder. Run it twice with the same ``--workdir`` and nothing is
embedded the second time: every chunk and every question is a cache hit.
The saved index works with the command line too (``cachedvec query``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableParallel, RunnablePassthrough
from langchain_text_splitters import MarkdownTextSplitter

from cachedvec import CachedEmbeddings, CachedVectorStore

CORPUS = Path(__file__).parent / "corpus"
SOURCES = [CORPUS / "handbook", CORPUS / "products" / "halcyon-k2-kettle"]
QUESTIONS = [
    "How many unused holiday days can I take into next year?",
    # Naming the error code matters to a small model: asked "What's wrong?",
    # all-MiniLM-L6-v2 ranks the "won't switch on" and "switches off" sections
    # above the error-code table (E1: dry boil), 4th; asked this way, 1st.
    "My kettle flashes red once and won't heat. What does the error code mean?",
]
PROMPT = ChatPromptTemplate.from_messages(
    [
        (
            "system",
            "Answer the question using only the context below. If the context does not "
            "hold the answer, say so.\n\nContext:\n{context}",
        ),
        ("human", "{question}"),
    ]
)


def load_documents() -> list[Document]:
    """Markdown-aware chunks of every .md/.txt file, each tagged with its source."""
    splitter = MarkdownTextSplitter(chunk_size=1000, chunk_overlap=150)
    documents = []
    for folder in SOURCES:
        for path in sorted(folder.glob("*")):
            if path.suffix in (".md", ".txt"):
                source = str(path.relative_to(CORPUS))
                documents += splitter.create_documents(
                    [path.read_text("utf-8")], metadatas=[{"source": source}]
                )
    return documents


def format_docs(documents: list[Document]) -> str:
    return "\n\n".join(f"[{d.metadata['source']}]\n{d.page_content}" for d in documents)


def build_chain(retriever: Runnable) -> Runnable:
    """question -> {"question", "docs", "context", "prompt"}; an LLM would read "prompt"."""
    return (
        RunnableParallel(docs=retriever, question=RunnablePassthrough())
        .assign(context=lambda x: format_docs(x["docs"]))
        .assign(prompt=PROMPT)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Folder for the cache and the index (default: a new temp folder).",
    )
    parser.add_argument(
        "--question",
        action="append",
        default=None,
        help="Question to ask (repeatable; default: two example questions).",
    )
    parser.add_argument(
        "-k", type=int, default=4, help="Chunks to retrieve per question (default: 4)."
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cachedvec-rag-"))
    workdir.mkdir(parents=True, exist_ok=True)

    documents = load_documents()
    store, index = f"sqlite:///{workdir / 'cache.db'}", workdir / "index"
    # Both close on the way out, even if a question fails: the store's
    # docstore first, then the embeddings' SQLite cache.
    with (
        CachedEmbeddings(store=store) as embeddings,
        CachedVectorStore.from_documents(documents, embedding=embeddings) as vectorstore,
    ):
        s = embeddings.stats
        print(
            f"indexed {len(documents)} chunks: {s.computed} vectors computed, "
            f"{s.hits} from the cache"
        )
        chain = build_chain(vectorstore.as_retriever(search_kwargs={"k": args.k}))

        for question in args.question or QUESTIONS:
            embeddings.stats.reset()
            out = chain.invoke(question)
            cached = "from the cache" if embeddings.stats.hits else "computed"
            print(f"\n=== {question} (query vector {cached})")
            print("retrieved:")
            for rank, doc in enumerate(out["docs"], 1):
                print(f"  {rank}. {doc.metadata['source']}")
            print("prompt for the LLM:")
            print(out["prompt"].to_string())

        vectorstore.save(index)
    print(
        f"\nsaved the index; ask it from the shell:\n"
        f'  cachedvec query "How do I descale the kettle?" --index {index} --store {store}'
    )


if __name__ == "__main__":
    main()
