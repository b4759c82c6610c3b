import { defineFunction } from "@flux/functions";
import slugify from "slugify";

export default defineFunction({
  name: "slugify_title",
  handler: async ({ input, ctx }) => {
    const slug = slugify(String(input.title ?? ""), { lower: true, strict: true });
    ctx.log("slugified", { slug });
    return { slug, runtime: `node ${process.version}` };
  },
});
