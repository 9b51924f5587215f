import { test } from "node:test";
import assert from "node:assert/strict";
import { orderProblems, problemsHeadline } from "../src/model/fileproblems.js";

test("orderProblems: the shown run's problems first, others after, junk dropped", () => {
  const ps = [{ run: "a", file: "1" }, { run: "b", file: "2" }, null, "x", { run: "b", file: "3" }];
  assert.deepEqual(orderProblems(ps, "b").map((p) => p.file), ["2", "3", "1"]);
  assert.deepEqual(orderProblems(ps, "zzz").map((p) => p.file), ["1", "2", "3"]);
  assert.deepEqual(orderProblems(undefined, "a"), []);
});

test("problemsHeadline: singular and plural", () => {
  assert.equal(problemsHeadline(1), "1 event file could not be read completely");
  assert.equal(problemsHeadline(4), "4 event files could not be read completely");
});
