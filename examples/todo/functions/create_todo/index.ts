import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "create_todo",
  handler: async ({ input, ctx }) => {
    const title = String(input.title ?? "").trim();
    if (!title) {
      throw new Error("title is required");
    }
    const [todo] = await ctx.db.query({
      table: "todos",
      operation: "insert",
      values: { title, due_date: input.due_date ?? null },
      returning: ["id", "title", "done", "due_date", "created_at"],
    });
    ctx.log("created todo", { id: todo.id, app: ctx.env.APP_NAME ?? "todo" });
    return { todo };
  },
});
