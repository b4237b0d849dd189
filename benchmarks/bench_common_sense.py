"""Common sense on ml-latest-small: histories whose next film any fan would name (the next film of a series), each
ranked over the whole catalog by genrec, SASRec, the content baseline (MiniLM on item texts) and most-popular.

    python -m benchmarks.bench_common_sense --model runs/bq/movielens/default --data runs/bq/movielens/data

Why: the test split's targets are whatever users watched next, so NDCG says little about whether a recommender
knows what a film is. Here the answer is known: after *Toy Story* and *Toy Story 2*, *Toy Story 3*. A model whose
item rows are read from the titles (`item_text=grounded`) should get these where an ID-only model (SASRec) relies
on co-occurrence alone. The cases are written by hand below (exact catalog titles); each is a "user" for the
paired bootstrap (few cases: wide intervals, a check, not a benchmark of record).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import machine, write_results

# (history, the film that comes next): ml-latest-small titles as the catalog writes them
SERIES = [
    (["Toy Story (1995)", "Toy Story 2 (1999)"], "Toy Story 3 (2010)"),
    (["Lord of the Rings: The Fellowship of the Ring, The (2001)", "Lord of the Rings: The Two Towers, The (2002)"],
     "Lord of the Rings: The Return of the King, The (2003)"),
    (["Star Wars: Episode IV - A New Hope (1977)", "Star Wars: Episode V - The Empire Strikes Back (1980)"],
     "Star Wars: Episode VI - Return of the Jedi (1983)"),
    (["Star Wars: Episode I - The Phantom Menace (1999)", "Star Wars: Episode II - Attack of the Clones (2002)"],
     "Star Wars: Episode III - Revenge of the Sith (2005)"),
    (["Harry Potter and the Sorcerer's Stone (a.k.a. Harry Potter and the Philosopher's Stone) (2001)",
      "Harry Potter and the Chamber of Secrets (2002)"], "Harry Potter and the Prisoner of Azkaban (2004)"),
    (["Harry Potter and the Goblet of Fire (2005)", "Harry Potter and the Order of the Phoenix (2007)"],
     "Harry Potter and the Half-Blood Prince (2009)"),
    (["Harry Potter and the Deathly Hallows: Part 1 (2010)"], "Harry Potter and the Deathly Hallows: Part 2 (2011)"),
    (["Matrix, The (1999)"], "Matrix Reloaded, The (2003)"),
    (["Back to the Future (1985)", "Back to the Future Part II (1989)"], "Back to the Future Part III (1990)"),
    (["Godfather, The (1972)"], "Godfather: Part II, The (1974)"),
    (["Raiders of the Lost Ark (Indiana Jones and the Raiders of the Lost Ark) (1981)",
      "Indiana Jones and the Temple of Doom (1984)"], "Indiana Jones and the Last Crusade (1989)"),
    (["Terminator, The (1984)"], "Terminator 2: Judgment Day (1991)"),
    (["Alien (1979)"], "Aliens (1986)"),
    (["Shrek (2001)"], "Shrek 2 (2004)"),
    (["Pirates of the Caribbean: The Curse of the Black Pearl (2003)"],
     "Pirates of the Caribbean: Dead Man's Chest (2006)"),
    (["Kill Bill: Vol. 1 (2003)"], "Kill Bill: Vol. 2 (2004)"),
    (["Die Hard (1988)"], "Die Hard 2 (1990)"),
    (["Jurassic Park (1993)"], "Lost World: Jurassic Park, The (1997)"),
    (["Batman Begins (2005)", "Dark Knight, The (2008)"], "Dark Knight Rises, The (2012)"),
    (["The Hunger Games (2012)"], "The Hunger Games: Catching Fire (2013)"),
    (["X-Men (2000)"], "X2: X-Men United (2003)"),
    (["Spider-Man (2002)"], "Spider-Man 2 (2004)"),
    (["Ocean's Eleven (2001)"], "Ocean's Twelve (2004)"),
    (["Before Sunrise (1995)"], "Before Sunset (2004)"),
    (["Iron Man (2008)"], "Iron Man 2 (2010)"),
    (["Despicable Me (2010)"], "Despicable Me 2 (2013)"),
    (["How to Train Your Dragon (2010)"], "How to Train Your Dragon 2 (2014)"),
    (["Ice Age (2002)"], "Ice Age 2: The Meltdown (2006)"),
    (["Mission: Impossible (1996)"], "Mission: Impossible II (2000)"),
    (["Rocky (1976)"], "Rocky II (1979)"),
    (["Men in Black (a.k.a. MIB) (1997)"], "Men in Black II (a.k.a. MIIB) (a.k.a. MIB 2) (2002)"),
    (["Austin Powers: International Man of Mystery (1997)"], "Austin Powers: The Spy Who Shagged Me (1999)"),
    (["Hangover, The (2009)"], "Hangover Part II, The (2011)"),
    (["Bourne Identity, The (2002)"], "Bourne Supremacy, The (2004)"),
    (["Twilight (2008)"], "Twilight Saga: New Moon, The (2009)"),
    (["Kung Fu Panda (2008)"], "Kung Fu Panda 2 (2011)"),
    (["Cars (2006)"], "Cars 2 (2011)"),
    (["Incredibles, The (2004)"], "Incredibles 2 (2018)"),
    (["Captain America: The First Avenger (2011)"], "Captain America: The Winter Soldier (2014)"),
    (["Thor (2011)"], "Thor: The Dark World (2013)"),
    (["Avengers, The (2012)"], "Avengers: Age of Ultron (2015)"),
    (["Guardians of the Galaxy (2014)"], "Guardians of the Galaxy 2 (2017)"),
    (["Finding Nemo (2003)"], "Finding Dory (2016)"),
    (["Hobbit: An Unexpected Journey, The (2012)"], "Hobbit: The Desolation of Smaug, The (2013)"),
    (["Sherlock Holmes (2009)"], "Sherlock Holmes: A Game of Shadows (2011)"),
    (["Ghostbusters (a.k.a. Ghost Busters) (1984)"], "Ghostbusters II (1989)"),
    (["Gremlins (1984)"], "Gremlins 2: The New Batch (1990)"),
    (["Wayne's World (1992)"], "Wayne's World 2 (1993)"),
    (["Bill & Ted's Excellent Adventure (1989)"], "Bill & Ted's Bogus Journey (1991)"),
    (["Kingsman: The Secret Service (2015)"], "Kingsman: The Golden Circle (2017)"),
    (["Deadpool (2016)"], "Deadpool 2 (2018)"),
    (["John Wick (2014)"], "John Wick: Chapter Two (2017)"),
    (["Lethal Weapon (1987)"], "Lethal Weapon 2 (1989)"),
    (["Home Alone (1990)"], "Home Alone 2: Lost in New York (1992)"),
    (["Scream (1996)"], "Scream 2 (1997)"),
    (["Rush Hour (1998)"], "Rush Hour 2 (2001)"),
    (["Legally Blonde (2001)"], "Legally Blonde 2: Red, White & Blonde (2003)"),
    (["American Pie (1999)"], "American Pie 2 (2001)"),
    (["Night at the Museum (2006)"], "Night at the Museum: Battle of the Smithsonian (2009)"),
    (["National Treasure (2004)"], "National Treasure: Book of Secrets (2007)"),
]


def cases(catalog: dict[str, dict]) -> list[tuple[list[str], str]]:
    """SERIES as item ids; a title the catalog lacks stops the run (the cases must be what the table says)."""
    by_title = {row["title"]: i for i, row in catalog.items()}
    missing = [t for h, nxt in SERIES for t in h + [nxt] if t not in by_title]
    if missing:
        raise SystemExit(f"not in the catalog: {missing[:3]} (the cases are written for ml-latest-small)")
    return [([by_title[t] for t in h], by_title[nxt]) for h, nxt in SERIES]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an item-token model trained on ml-latest-small")
    ap.add_argument("--data", required=True, help="its prepared data (`genrec data prepare`): SASRec trains on it")
    ap.add_argument("--name", default="common_sense_movielens", help="results file stem under benchmarks/results/")
    args = ap.parse_args()

    from genrec.data.prepared import load_prepared
    from genrec.eval.baselines import content_rankings, popular_rankings
    from genrec.infer.query import Query
    from genrec.infer.recommender import Recommender
    from genrec.infer.retriever import Retriever
    from genrec.metrics import (bootstrap_draws, fmt_ci, fmt_diff, paired_difference, per_user, summary,
                                target_ranks)

    data = load_prepared(args.data)
    todo = cases(data.catalog)
    histories, targets = [h for h, _ in todo], [t for _, t in todo]
    seen = [set(h) for h in histories]
    k = 10
    rec = Recommender(args.model)
    lists = {"genrec": [[p.item_id for p in r.items] for r in
                        rec.recommend([Query(history=h, seen=s) for h, s in zip(histories, seen)], k=k)]}
    sasrec, _ = Retriever.cached(data, log=lambda m: None)
    lists["sasrec"] = [[i for i, _ in row] for row in sasrec.top(histories, seen, k)]
    lists["content (MiniLM)"] = content_rankings(rec.catalog, histories, seen, k)
    lists["popular"] = popular_rankings(data.training_counts(), seen, k)
    draws = bootstrap_draws(len(todo))
    values = {name: per_user(target_ranks(ranked, targets), [1, 10]) for name, ranked in lists.items()}
    rows, report = [], {"cases": len(todo), "k": k, "model": args.model, "machine": machine(), "models": {}}
    for name, v in values.items():
        iv = summary(v, draws)
        diff = paired_difference(values["genrec"], v, draws) if name != "genrec" else {}
        report["models"][name] = {"intervals": iv, "genrec_minus_this": diff,
                                  "hits": [data.catalog[t]["title"] for t, r in zip(targets, v["HR@10"]) if r]}
        rows.append({"model": name, "cases": len(todo), "HR@10": fmt_ci(iv["HR@10"]), "HR@1": fmt_ci(iv["HR@1"]),
                     "genrec - this (HR@10)": fmt_diff(diff["HR@10"]) if diff else ""})
    report["genrec_top3"] = {data.catalog[t]["title"]: [data.catalog[i]["title"] for i in ranked[:3]]
                             for t, ranked in zip(targets, lists["genrec"])}
    write_results(args.name, report, rows)


if __name__ == "__main__":
    main()
